"""QMP monitor: a sync facade over qemu.qmp's async client.

The client runs on a private event loop in a daemon thread, so the rest of the
orchestrator (paramiko, subprocess) stays synchronous. Events are recorded as
they arrive, with a timestamp, to memory and to a JSON-lines log; waiters look
at the record instead of competing for a queue.

A guest can make QEMU send events without end (pvpanic writes in a loop: some
450,000 in 5 s), so the record is bounded: every event is counted by name, the
first EVENTS_KEPT are kept, then only the ones that say the guest went down or
a memory failure (up to KEPT_PER_NAME each), and the last EVENTS_TAIL. More
than STORM_EVENTS_PER_S in one second is named an event storm.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import re
import socket
import threading
import time
from pathlib import Path

from qemu.qmp import EventListener, QMPClient, Runstate
from qemu.qmp.message import Message
from qemu.qmp.error import QMPError


EVENTS_KEPT = 1000          # the first events, kept and logged in full
EVENTS_TAIL = 100           # and the latest ones
KEPT_PER_NAME = 100         # events that always matter, kept beyond the first ones
ALWAYS_KEPT = {"GUEST_PANICKED", "SHUTDOWN", "RESET", "MEMORY_FAILURE", "STOP", "RESUME"}
STORM_EVENTS_PER_S = 1000   # QEMU sends a handful per scenario


_EVENT_NAME = re.compile(rb'"event": *"([A-Za-z0-9_-]{1,64})"')


class MonitorError(Exception):
    pass


class _QMPClient(QMPClient):
    """qemu.qmp's client, made cheap per event: it pretty-prints every incoming message
    for a debug log line (even with debug logging off), and once a storm is on, events
    that are only counted skip the parsing altogether (`skip(raw)` says which)."""

    skip = staticmethod(lambda raw: False)

    def _cb_inbound(self, msg):
        return msg

    async def _do_recv(self) -> Message:
        while True:
            raw = await self._readline()
            if not raw.endswith(b"\n"):
                raise EOFError  # QEMU went away in the middle of a message
            if not self.skip(raw):
                return Message(raw, eager=True)


class MonitorLogs:
    """What every monitor (the QMP one here, libvirt's passthrough) shares: its command
    log -- a full artifacts disk must not cost the run or the events themselves (kept in
    memory) -- and hmp() on top of its own hmp_query()."""
    _command_log: object
    _t0: float
    log_error: str | None

    def hmp_query(self, line: str, timeout: float = 10, cpu: int | None = None) -> str:
        raise NotImplementedError

    def hmp(self, line: str, timeout: float = 10) -> str:
        """Run an HMP command whose success is an empty reply."""
        reply = self.hmp_query(line, timeout)
        if reply.strip():
            # HMP reports errors as text, never as a QMP error.
            raise MonitorError(f"HMP '{line}' failed: {reply.strip()}")
        return reply

    def _log_command(self, text: str) -> None:
        self._write(self._command_log, f"{time.monotonic() - self._t0:9.3f} {text}\n")

    def _write(self, log, text: str) -> None:
        try:
            log.write(text)
        except OSError as exc:
            self.log_error = self.log_error or f"{exc.strerror}: {log.name}"


class BoundedEvents:
    """QEMU's events as every monitor records them (see the module's docstring): each
    counted by name, the first and the always-kept ones in full, the latest in a
    tail, an event storm named; waiters look at the record."""
    _t0: float
    _event_log: object

    def _init_events(self) -> None:
        self._events: list[dict] = []       # the first and the always-kept ones
        self._tail: collections.deque = collections.deque(maxlen=EVENTS_TAIL)
        self.counts: collections.Counter = collections.Counter()
        self.storm: str | None = None       # what the storm was, once there was one
        self._window = (0.0, 0)             # (start, events) of the current second
        self._changed = threading.Condition()

    def _record(self, name: str, full, now: float) -> dict | None:
        """Count event `name` arriving at `now`; full() makes its whole record (only
        called when it is kept, or before a storm). The record to log, if kept in full."""
        with self._changed:
            self.counts[name] += 1
            seq = sum(self.counts.values())
            self._count_rate(now, name)
            keep = len(self._events) < EVENTS_KEPT or (name in ALWAYS_KEPT and self.counts[name] <= KEPT_PER_NAME)
            record = full() if keep or not self.storm else {"event": name}
            record["elapsed"] = round(now - self._t0, 3)
            record["seq"] = seq
            (self._events if keep else self._tail).append(record)
            self._changed.notify_all()
        return record if keep else None

    def _count_rate(self, now: float, name: str) -> None:
        start, n = self._window
        if now - start >= 1.0:
            self._window = (now, 1)
            return
        self._window = (start, n + 1)
        if n + 1 > STORM_EVENTS_PER_S and self.storm is None:
            self.storm = f"event storm: more than {STORM_EVENTS_PER_S} QEMU events within 1 s ({name})"

    def events(self) -> list[dict]:
        """The events kept (see the module's docstring), in the order they came."""
        with self._changed:
            return list(heapq.merge(self._events, self._tail, key=lambda e: e["seq"]))

    def seen(self, name: str) -> bool:
        with self._changed:
            return self.counts[name] > 0

    def dropped(self) -> int:
        """Events counted but not kept."""
        with self._changed:
            return sum(self.counts.values()) - len(self.events())

    def wait_for_event(self, names: set[str], timeout: float, start: int = 0) -> dict | None:
        """First event named in `names` at index >= start, or None when time runs out."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events()[start:]:
                    if event["event"] in names:
                        return event
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def summary(self) -> str:
        """Counts by name, and what was not kept: for the event log and the report."""
        with self._changed:
            counts = ", ".join(f"{n} {name}" for name, n in self.counts.most_common())
        dropped = self.dropped()
        return f"{counts or 'no events'}" + (f"; {dropped} not kept" if dropped else "")

    def _log_not_kept(self) -> None:
        """At close: the events not kept, how many of each, and the last ones."""
        if self.dropped():
            self._write(self._event_log, json.dumps({"event": "mce-orchestrator: events not kept",
                                                     "counts": dict(self.counts), "dropped": self.dropped(),
                                                     "storm": self.storm}) + "\n")
            for record in self._tail:
                self._write(self._event_log, json.dumps(record) + "\n")


class Monitor(MonitorLogs, BoundedEvents):
    def __init__(self, sock: socket.socket, event_log: Path, command_log: Path):
        self._sock = sock
        self._event_log = event_log.open("a", buffering=1)
        self._command_log = command_log.open("a", buffering=1)
        self._init_events()
        self._hmp: HmpChannel | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._client = _QMPClient("mce-guest")
        self._client.skip = self._counted_only
        self._listener = EventListener()
        self._drain_task = None
        self._t0 = time.monotonic()
        self.log_error: str | None = None

    # --- lifecycle ---
    def connect(self, timeout: float) -> None:
        self._thread.start()
        self._client.register_listener(self._listener)
        try:
            self._run(self._client.connect(self._sock), timeout)
        except (QMPError, OSError, EOFError, AssertionError, asyncio.CancelledError) as exc:
            # A QEMU that exits during the greeting (a saved state it cannot load) can
            # leave qemu.qmp's connect failing its own runstate assertion: that is QEMU
            # gone, as the caller's launch error then says, not a harness bug.
            raise MonitorError(f"QMP connect: {exc!r}") from exc
        self._run(self._start_drain(), timeout)

    def read_to_end(self, timeout: float) -> None:
        """After QEMU exited: wait (at most `timeout`) until every event it sent before
        going is in events(), its socket read to EOF. A guest that reboots under
        -no-reboot sends SHUTDOWN and exits at once: the exit can be seen first."""
        end = time.monotonic() + timeout
        while self._client.runstate == Runstate.RUNNING and time.monotonic() < end:
            time.sleep(0.02)  # the reader has not met EOF yet

        async def recorded() -> None:
            # On the loop's own thread: an empty queue means the drain task took and
            # recorded every event (it records in the step that takes one).
            while not self._listener.empty():
                await asyncio.sleep(0.01)

        with contextlib.suppress(MonitorError):
            self._run(recorded(), max(end - time.monotonic(), 0.1))

    def catch_up(self, timeout: float) -> bool:
        """After a storm: stop the guest (no more events) and read every event QEMU has
        queued for us, up to the reply of a command sent now. False if that took too long."""
        with contextlib.suppress(MonitorError):
            self.hmp("stop", timeout=min(timeout, 2))
        try:
            self.execute("query-status", timeout=timeout)
            return True
        except MonitorError:
            return False

    def attach_hmp(self, sock: socket.socket, timeout: float) -> None:
        """Send HMP commands (mce, stop, cont, info registers) over this human monitor
        instead of QMP's human-monitor-command: QEMU sends no events there."""
        channel = HmpChannel(sock)
        channel.connect(timeout)
        self._hmp = channel

    def close(self) -> None:
        if self._hmp is not None:
            self._hmp.close()
        if self._thread.is_alive():
            try:
                self._run(self._client.disconnect(), 5)
            except Exception:  # noqa: BLE001 -- closing must never raise
                pass
            try:
                self._run(self._stop_drain(), 2)
            except Exception:  # noqa: BLE001
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._sock.close()
        self._log_not_kept()
        for log in (self._event_log, self._command_log):
            try:
                log.close()
            except OSError as exc:  # the buffered tail could not be written
                self.log_error = self.log_error or f"{exc.strerror}: {log.name}"

    # --- commands ---
    def execute(self, command: str, arguments: dict | None = None, timeout: float = 10) -> object:
        self._log_command(command if arguments is None else f"{command} {json.dumps(arguments)}")
        try:
            return self._run(self._client.execute(command, arguments), timeout)
        except (QMPError, OSError, EOFError, asyncio.CancelledError) as exc:
            # A dropped connection (QEMU died) surfaces here too.
            raise MonitorError(f"QMP {command}: {exc or type(exc).__name__}") from exc

    def hmp_query(self, line: str, timeout: float = 10, cpu: int | None = None) -> str:
        if self._hmp is not None:
            # A monitor of its own: the reply never waits behind a flood of events.
            self._log_command(f"hmp {line}" + (f" (cpu {cpu})" if cpu is not None else ""))
            return self._hmp.query(line, timeout, cpu)
        # Each call gets a fresh HMP monitor, so an earlier "cpu N" does not carry
        # over: the vCPU a command is about goes with the same call.
        arguments = {"command-line": line} if cpu is None else {"command-line": line, "cpu-index": cpu}
        reply = self.execute("human-monitor-command", arguments, timeout)
        assert isinstance(reply, str)
        return reply

    # --- internals ---
    async def _start_drain(self) -> None:
        self._drain_task = asyncio.create_task(self._drain())

    async def _stop_drain(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            try:
                await self._drain_task
            except asyncio.CancelledError:
                pass

    def _counted_only(self, raw: bytes) -> bool:
        """During a storm: count an event that would not be kept, without parsing it."""
        if self.storm is None or b'"return"' in raw[:12] or b'"error"' in raw[:12]:
            return False
        match = _EVENT_NAME.search(raw)
        if match is None:
            return False
        name = match.group(1).decode()
        now = time.monotonic()
        with self._changed:
            if name in ALWAYS_KEPT and self.counts[name] < KEPT_PER_NAME:
                return False
            self.counts[name] += 1
            self._count_rate(now, name)
            self._tail.append({"event": name, "elapsed": round(now - self._t0, 3), "seq": sum(self.counts.values())})
        return True

    async def _drain(self) -> None:
        async for event in self._listener:
            record = self._record(str(event.get("event")), lambda: dict(event), time.monotonic())
            if record is not None:
                self._write(self._event_log, json.dumps(record) + "\n")

    def _run(self, coro, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise MonitorError(f"QMP did not answer within {timeout:g} s") from None


class HmpChannel:
    """QEMU's human monitor on a socket: a line out, the reply up to the next prompt back.
    QEMU's readline echoes the line (with terminal escapes) first: that part is dropped."""
    PROMPT = b"(qemu) "
    MAX_REPLY = 1 << 20

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._lock = threading.Lock()

    def connect(self, timeout: float) -> None:
        self._read_reply(time.monotonic() + timeout)  # the banner

    def query(self, line: str, timeout: float, cpu: int | None = None) -> str:
        end = time.monotonic() + timeout
        with self._lock:
            if cpu is not None:
                reply = self._exchange(f"cpu {cpu}", end)
                if reply.strip():
                    raise MonitorError(f"HMP 'cpu {cpu}' failed: {reply.strip()}")
            return self._exchange(line, end)

    def _exchange(self, line: str, end: float) -> str:
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as exc:
            raise MonitorError(f"HMP {line}: {exc.strerror or exc}") from None
        data = self._read_reply(end, line)
        echo, _, reply = data.partition(b"\r\n")
        return reply.decode(errors="replace").replace("\r\n", "\n")

    def _read_reply(self, end: float, what: str = "banner") -> bytes:
        data = b""
        while not data.endswith(self.PROMPT):
            remaining = end - time.monotonic()
            if remaining <= 0 or len(data) > self.MAX_REPLY:
                raise MonitorError(f"HMP did not answer '{what}' within the time given")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as exc:
                raise MonitorError(f"HMP {what}: {exc.strerror or exc}") from None
            if not chunk:
                raise MonitorError(f"HMP {what}: QEMU closed its monitor")
            data += chunk
        return data[:-len(self.PROMPT)]

    def close(self) -> None:
        self._sock.close()
