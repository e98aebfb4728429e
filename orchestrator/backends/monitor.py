"""QMP monitor: a sync facade over qemu.qmp's async client.

The client runs on a private event loop in a daemon thread, so the rest of the
orchestrator (paramiko, subprocess) stays synchronous. Every event is recorded
as it arrives, with a timestamp, to memory and to a JSON-lines log; waiters
look at the record instead of competing for a queue.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

from qemu.qmp import EventListener, QMPClient
from qemu.qmp.error import QMPError


class MonitorError(Exception):
    pass


class Monitor:
    def __init__(self, sock: socket.socket, event_log: Path, command_log: Path):
        self._sock = sock
        self._event_log = event_log.open("a", buffering=1)
        self._command_log = command_log.open("a", buffering=1)
        self._events: list[dict] = []
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._client = QMPClient("mce-guest")
        self._listener = EventListener()
        self._drain_task = None
        self._t0 = time.monotonic()
        self.log_error: str | None = None

    # --- lifecycle ---
    def connect(self, timeout: float) -> None:
        self._thread.start()
        self._client.register_listener(self._listener)
        self._run(self._client.connect(self._sock), timeout)
        self._run(self._start_drain(), timeout)

    def close(self) -> None:
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

    def hmp(self, line: str, timeout: float = 10) -> str:
        """Run an HMP command whose success is an empty reply."""
        reply = self.hmp_query(line, timeout)
        if reply.strip():
            # HMP reports errors as text, never as a QMP error.
            raise MonitorError(f"HMP '{line}' failed: {reply.strip()}")
        return reply

    def hmp_query(self, line: str, timeout: float = 10, cpu: int | None = None) -> str:
        # Each call gets a fresh HMP monitor, so an earlier "cpu N" does not carry
        # over: the vCPU a command is about goes with the same call.
        arguments = {"command-line": line} if cpu is None else {"command-line": line, "cpu-index": cpu}
        reply = self.execute("human-monitor-command", arguments, timeout)
        assert isinstance(reply, str)
        return reply

    # --- events ---
    def events(self) -> list[dict]:
        with self._changed:
            return list(self._events)

    def wait_for_event(self, names: set[str], timeout: float, start: int = 0) -> dict | None:
        """First event named in `names` at index >= start, or None when time runs out."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self._events[start:]:
                    if event["event"] in names:
                        return event
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

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

    async def _drain(self) -> None:
        async for event in self._listener:
            record = dict(event)
            record["elapsed"] = round(time.monotonic() - self._t0, 3)
            self._write(self._event_log, json.dumps(record) + "\n")
            with self._changed:
                self._events.append(record)
                self._changed.notify_all()

    def _log_command(self, text: str) -> None:
        self._write(self._command_log, f"{time.monotonic() - self._t0:9.3f} {text}\n")

    def _write(self, log, text: str) -> None:
        # A full artifacts disk must not cost us the events themselves (kept in memory).
        try:
            log.write(text)
        except OSError as exc:
            self.log_error = self.log_error or f"{exc.strerror}: {log.name}"

    def _run(self, coro, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise MonitorError(f"QMP did not answer within {timeout:g} s") from None
