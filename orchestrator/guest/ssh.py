"""SSH to the guest: banner wait, pinned host key, commands with deadlines.

QEMU's user-mode network accepts a TCP connection before the guest's sshd
listens, so readiness is the `SSH-` banner, not a connect.
"""
from __future__ import annotations

import base64
import logging
import shlex
import socket
import time
from pathlib import Path
from typing import Callable

import paramiko

from orchestrator.plumbing.bounded import HeadTail, LineLog
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.guest_data import MAX_LINE, json_message
from orchestrator.plumbing.outcome import HarnessError

GUEST_HOST = "127.0.0.1"
BANNER_POLL_S = 0.25
OUTPUT_LIMIT = 4 << 20  # what one command's output keeps at most (first and last halves)
# The probe prints JSON reports of a few KiB; more than this of other text on its stream is a
# flood: its answer cannot be counted on any more, and the wait for it ends at once, naming it.
PROBE_NOISE_LIMIT = 2 << 20
NO_EXIT_STATUS = -1     # paramiko's exit status of a channel that closed without one
WATCH_S = 0.1           # a wait over SSH asks this often whether the guest went down
SFTP_REPLY_S = 10.0     # an SFTP request's answer comes within this long, or the transfer is over
DROP_GRACE_S = 1.0      # after a dropped connection: how long the reason (a QEMU event) may take to arrive


def interrupted(exc: BaseException | None) -> bool:
    """Whether `exc` was raised while a Ctrl-C (or SIGTERM, raised as one) was being handled."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


def open_socket(host: str, port: int, timeout: float, via=None):
    """A connection to host:port: direct, or `via` a hypervisor tunnel (a remote libvirt
    host, orchestrator.guest.libvirt.tunnel) as that host sees host:port."""
    if via is not None:
        return via.open(host, port, timeout)
    return socket.create_connection((host, port), timeout=timeout)


def wait_for_banner(port: int, deadline: Deadline, still_running=lambda: None, sshd_started=lambda: True,
                    host: str = GUEST_HOST, patience: float = BANNER_POLL_S, via=None) -> float:
    """Seconds until sshd greeted us; raises HarnessError('boot') when the deadline passes.

    `sshd_started` (e.g. a look at the console for the init's READY line) is a
    cheap local check; connections only start once it says yes. `patience`: how
    long one connection waits for the banner. A guest with no READY line is
    polled from the start, so each connection must wait long (slirp retries its
    SYN to the guest until sshd listens): short ones pile up by the hundred in
    slirp and stall it.
    """
    start = time.monotonic()
    last = "no answer"
    while not deadline.expired():
        why_dead = still_running()
        if why_dead:
            raise HarnessError("boot", why_dead)
        if not sshd_started():
            deadline.sleep(0.01)
            continue
        try:
            with open_socket(host, port, max(min(1.0, deadline.remaining()), 0.01), via) as s:
                # Short by default (after the READY line): a connection made before the
                # guest listens hangs in slirp's SYN retries (seconds); a fresh one gets
                # through as soon as it listens.
                s.settimeout(max(min(patience, deadline.remaining()), 0.01))
                if s.recv(4).startswith(b"SSH-"):
                    return time.monotonic() - start
                last = "connection closed without a banner"
        except (OSError, paramiko.SSHException) as exc:
            # A tunnel's errors carry their text in the message, not in strerror.
            last = getattr(exc, "strerror", None) or (str(exc) if via is not None else "") or type(exc).__name__
        deadline.sleep(0.05)
    through = f" through {via.description}" if via is not None else ""
    raise HarnessError("boot", f"no SSH banner on {host}:{port}{through} within {deadline.seconds:g} s ({last})")


def banner_answers(port: int, seconds: float, host: str = GUEST_HOST, via=None) -> bool:
    """Does sshd greet a new connection within `seconds`?"""
    try:
        wait_for_banner(port, Deadline(seconds, "banner"), host=host, via=via)
        return True
    except HarnessError:
        return False


def pinned_host_keys(host_key_line: str, port: int, host: str = GUEST_HOST) -> paramiko.HostKeys:
    kind, blob = host_key_line.split()[:2]
    keys = paramiko.HostKeys()
    keys.add(f"[{host}]:{port}" if port != 22 else host, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
    return keys


class SshSession:
    def __init__(self, port: int, client_key: Path, host_key_line: str, log_file: Path | None = None,
                 host: str = GUEST_HOST, user: str = "root", via=None):
        self.port = port
        self.host = host  # our own guests: the loopback forward; an attached domain: its configured address
        self.via = via    # a remote libvirt host: its tunnel (host:port are as that host sees them)
        self.user = user
        self._log_handler = None
        # paramiko's own account of the connection, for when it drops: a logger
        # of this session's own, kept out of the root logger (and of other
        # sessions' files, and of pytest's captured output).
        self._log_channel = f"paramiko.mce-{port}-{id(self):x}"
        if log_file is not None:
            self._log_handler = logging.FileHandler(log_file)
            self._log_handler.setFormatter(logging.Formatter("%(relativeCreated)9.0f %(levelname)s %(name)s: %(message)s"))
            logger = logging.getLogger(self._log_channel)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            logger.addHandler(self._log_handler)
        self._key = paramiko.Ed25519Key.from_private_key_file(str(client_key))
        self._host_keys = pinned_host_keys(host_key_line, port, host)
        self._client: paramiko.SSHClient | None = None
        self.reconnects = 0
        # Why the guest can no longer answer (a panic, a reset, QEMU gone), or None: asked
        # by every wait over this session, which then ends at once naming it.
        self.watch: Callable[[], str | None] = lambda: None

    def down_after_drop(self) -> str | None:
        """The connection dropped or a channel ended early: was it the guest going down?
        The QEMU event or exit may arrive a moment after the TCP connection's end."""
        why = self.watch()
        if why or self.connected():
            return why
        end = Deadline(DROP_GRACE_S, "drop")
        while not end.expired():
            end.sleep(0.05)
            why = self.watch()
            if why:
                return why
        return None

    def connect(self, deadline: Deadline) -> None:
        last = ""
        while not deadline.expired():
            client = paramiko.SSHClient()
            client._host_keys = self._host_keys  # the pinned key only: no known_hosts of the user
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.set_log_channel(self._log_channel)
            sock = None
            try:
                if self.via is not None:
                    sock = self.via.open(self.host, self.port, max(deadline.remaining(), 0.1))
                    logging.getLogger(self._log_channel).info("through the hypervisor %s", self.via.description)
                client.connect(self.host, self.port, username=self.user, pkey=self._key, sock=sock,
                               timeout=max(deadline.remaining(), 0.1), banner_timeout=max(deadline.remaining(), 0.1),
                               auth_timeout=max(deadline.remaining(), 0.1),
                               allow_agent=False, look_for_keys=False)
                self._client = client
                return
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise HarnessError("ssh", f"guest host key does not match the pinned one: {exc}") from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                client.close()
                if sock is not None:
                    sock.close()
                last = str(exc) or type(exc).__name__
                deadline.sleep(0.2)
        through = f" through {self.via.description}" if self.via is not None else ""
        raise HarnessError("ssh", f"cannot log in to {self.host}:{self.port}{through} within {deadline.seconds:g} s ({last})")

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise HarnessError("ssh", "not connected")
        return self._client

    def connected(self) -> bool:
        """Logged in, and the connection still up."""
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("connection closed")
        return transport

    def _open_exec(self, command: str, deadline: Deadline) -> paramiko.Channel:
        # dropbear now and then refuses or closes a new channel while another one
        # is ending; the command has not run then, so trying again is safe.
        while True:
            try:
                channel = self._transport().open_session(timeout=max(deadline.remaining(), 0.1))
                channel.set_combine_stderr(True)
                channel.exec_command(command)
                return channel
            except (paramiko.ChannelException, paramiko.SSHException, EOFError):
                if deadline.expired():
                    raise
                transport = self.client.get_transport()
                if transport is None or not transport.is_active():
                    # dropbear 2022.83 now and then drops the whole connection when a
                    # channel ends while another opens: log in again, and say so.
                    self.reconnects += 1
                    self.close_client()
                    self.connect(deadline)
                deadline.sleep(0.05)

    def run(self, command: str, deadline: Deadline, phase: str, limit: int = OUTPUT_LIMIT) -> tuple[int, str]:
        """Run a command; (exit status, stdout+stderr, its first and last `limit // 2` bytes when
        longer). Raises HarnessError on timeout, also while output keeps coming, or a drop,
        and GuestWentDown as soon as the guest goes down (self.watch)."""
        output = None
        channel = None
        try:
            channel = self._open_exec(command, deadline)
            output = HeadTail(limit)
            while True:
                channel.settimeout(min(max(deadline.remaining(), 0.01), WATCH_S))
                try:
                    chunk = channel.recv(65536)
                except (socket.timeout, TimeoutError):
                    self._check_watch(command, phase, channel)
                    if deadline.expired():
                        raise
                    continue
                if not chunk:
                    break
                output.add(chunk)
                if deadline.expired():  # a command that keeps printing does not extend it
                    channel.close()
                    raise TimeoutError
            while not channel.status_event.wait(min(max(deadline.remaining(), 0.01), WATCH_S)):
                self._check_watch(command, phase, channel)
                if deadline.expired():
                    channel.close()
                    raise TimeoutError
            status = channel.recv_exit_status()
            if status == NO_EXIT_STATUS and not _connection_up(channel):
                raise paramiko.SSHException("the connection ended before the command's exit status came")
            _await_remote_close(channel, deadline)
            channel.close()
            return status, output.value().decode(errors="replace")
        except (socket.timeout, TimeoutError):
            streamed = f" (it kept printing: {output.total} bytes)" if output is not None and output.total > limit else ""
            raise HarnessError(phase, f"'{command}' did not finish within {deadline.seconds:g} s{streamed}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            why = self.down_after_drop()
            if why:
                raise GuestWentDown(phase, f"{why} while '{command}' ran") from None
            raise HarnessError(phase, f"SSH dropped while running '{command}': {exc or type(exc).__name__}") from None

    def _check_watch(self, command: str, phase: str, channel: paramiko.Channel) -> None:
        why = self.watch()
        if why:
            channel.close()
            raise GuestWentDown(phase, f"{why} while '{command}' ran")

    def check(self, command: str, deadline: Deadline, phase: str, limit: int = OUTPUT_LIMIT) -> str:
        status, output = self.run(command, deadline, phase, limit)
        if status != 0:
            raise HarnessError(phase, f"'{command}' exited with {status}: {output.strip()[-200:]}")
        return output

    def upload(self, local: Path, remote: str, mode: int, deadline: Deadline, phase: str) -> None:
        # Opening SFTP right after boot fails now and then: retry within the deadline.
        last = ""
        while not deadline.expired():
            try:
                with self.client.open_sftp() as sftp:
                    # No wait of the transfer without end: paramiko's SFTP channel has no timeout,
                    # and a transfer cut short (Ctrl-C mid-packet) or a stalled sftp-server left
                    # its close waiting for an answer that never came.
                    sftp.get_channel().settimeout(min(max(deadline.remaining(), 0.1), SFTP_REPLY_S))
                    sftp.put(str(local), remote)
                    sftp.chmod(remote, mode)
                    # Our EOF ends the guest's sftp-server; its channel is then closed by the
                    # guest first, as a command's is, before anything else opens (see _await_remote_close).
                    sftp.sock.shutdown_write()
                    _await_remote_close(sftp.sock, deadline)
                return
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if interrupted(exc):
                    raise KeyboardInterrupt from None  # what the clean-up raised is not the story
                last = str(exc) or type(exc).__name__
                deadline.sleep(0.2)
        raise HarnessError(phase, f"cannot upload {local.name} over SFTP within {deadline.seconds:g} s ({last})")

    def start(self, command: str) -> "RemoteProcess":
        channel = self._transport().open_session()
        channel.exec_command(command)
        return RemoteProcess(channel, command, session=self)

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        self.close_client()
        if self._log_handler is not None:
            logging.getLogger(self._log_channel).removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


class GuestWentDown(HarnessError):
    """A wait over SSH ended because the guest went down (panic, reset, halt, QEMU gone)."""


class ProbeFlood(HarnessError):
    """The probe's stream carried more than PROBE_NOISE_LIMIT bytes that are not its reports."""


class ProbeExited(HarnessError):
    """The probe ended without the report we waited for (it may have been killed)."""

    def __init__(self, phase: str, message: str, status: int | None):
        super().__init__(phase, message)
        self.status = status


def probe_shell(command: str) -> str:
    """How the harness starts a probe: a shell prints its own pid first, then becomes the
    probe (exec: the same pid), before the probe exists for another process to write to
    its output; the outer shell prints how it ended (128+N: killed by signal N) as the
    stream's last line. A ready report from another pid is named among the causes."""
    return (f"""sh -c 'echo "{{\\"event\\":\\"started\\",\\"pid\\":$$}}"; exec "$0" "$@"' {command}; """
            f"""echo '{{"event":"exit","status":'$?'}}'""")


class RemoteProcess:
    """A command running in the guest that speaks JSON lines (the probe)."""

    def __init__(self, channel: paramiko.Channel, command: str, session: SshSession | None = None):
        self._channel = channel
        self.command = command
        self._session = session  # its watch: the guest going down ends every wait
        # The pids of the probe the harness started (its ready report's): a result line from
        # any other process (written to the same stream) is ignored and noted, never taken.
        self.owners: set[int] | None = None
        self.ignored: list[str] = []
        self.ignored_count = 0
        self.noise = 0             # bytes on the stream that are not the probe's JSON reports
        self.longest = 0           # the longest such line
        self.flood: str | None = None
        self._buffer = b""
        self._pending: list[dict] = []
        self.transcript = LineLog()  # bounded: a probe may print without end
        self.started_pid: int | None = None  # from probe_shell's first line: the probe's own pid
        self.ready_seen = False
        self._exit: dict | None = None        # the last exit line; it counts only as the stream's last
        self.forged: list[str] = []           # lines that cannot be the probe's (what each claimed)
        self.second_ready: list[str] = []     # ready reports after the first (whose pids)

    def pushback(self, message: dict) -> None:
        """Hand a message already read back to the next read_event."""
        self._pending.append(message)

    def send(self, line: str) -> bool:
        """Send a command line; False when the probe has already gone (it exits after a SIGBUS report)."""
        try:
            self._channel.sendall((line + "\n").encode())
        except (OSError, EOFError, paramiko.SSHException):
            self.transcript.append(f"> {line}   (not sent: the probe's channel is closed)")
            return False
        self.transcript.append(f"> {line}")
        return True

    def read_event(self, names: set[str], deadline: Deadline, phase: str, abort=lambda: None) -> dict:
        """Next JSON line whose "event" is in names; other lines are kept in the transcript.

        `abort` is asked between reads; a reason it returns (the guest panicked)
        ends the wait at once instead of at the deadline.
        """
        if self.flood:
            raise ProbeFlood(phase, self.flood)
        for message in list(self._pending):
            if message.get("event") in names:
                self._pending.remove(message)
                return message
        while True:
            if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
                # A line without end: keep its start in the transcript, drop the rest.
                self.transcript.append(self._buffer[:200].decode(errors="replace")
                                       + f"... (line cut: over {MAX_LINE} bytes without a newline)")
                self._noise(len(self._buffer), phase)
                self._buffer = b""
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                if len(raw) > MAX_LINE:
                    self.transcript.append(raw[:200].decode(errors="replace") + f"... (line cut: {len(raw)} bytes)")
                    self._noise(len(raw) + 1, phase)
                    continue
                line = raw.decode(errors="replace")
                self.transcript.append(line)
                message = json_message(line)
                if message is None:
                    self._noise(len(raw) + 1, phase)
                    continue  # not one of the probe's JSON objects: kept in the transcript only (bounded)
                if message.get("event") == "error":
                    raise HarnessError(phase, f"probe failed: {str(message.get('what'))[:200]}: "
                                              f"{str(message.get('strerror'))[:200]}")
                if self._exit is not None:
                    # Output after an exit line: that line was not the shell's (it prints the last one).
                    self._forged(f"an exit line (status {shown_pid(self._exit.get('status'))}) "
                                 f"before the probe's own output ended")
                    self._exit = None
                event = message.get("event")
                if event == "started":
                    if self.started_pid is None and type(message.get("pid")) is int:
                        self.started_pid = message["pid"]
                    else:
                        self._forged(f"a second 'started' line (pid {shown_pid(message.get('pid'))})")
                    continue
                if event == "ready" and self.ready_seen:
                    # The probe prints one: of two, either could be another process's (the first
                    # was taken already), so the target it named is not known to be the probe's.
                    self.second_ready.append(f"pid {shown_pid(message.get('pid'))}")
                    self._forged(f"a second ready report (pid {shown_pid(message.get('pid'))})")
                    continue
                if event == "exit":
                    self._exit = message  # taken once the stream ends after it (see the EOF below)
                    continue
                if message.get("event") == "result" and self.owners is not None and not self._own(message):
                    self.ignored_count += 1
                    if len(self.ignored) < 5:  # a flood of them is counted, not kept
                        self.ignored.append(f"pid {shown_pid(message.get('pid'))}")
                    self.transcript.append("   (ignored: not a result of the probe the harness started, "
                                           f"whose pids are {sorted(self.owners)})")
                    continue
                if event in names:
                    if event == "ready":
                        self.ready_seen = True
                    return message
            if deadline.expired():
                raise HarnessError(phase, f"probe sent no {'/'.join(sorted(names))} within {deadline.seconds:g} s")
            why = abort()
            if why:
                raise HarnessError(phase, f"probe sent no {'/'.join(sorted(names))}: {why}")
            why = self._session.watch() if self._session is not None else None
            if why:
                raise GuestWentDown(phase, f"{why}: the probe sent no {'/'.join(sorted(names))}")
            self._channel.settimeout(min(max(deadline.remaining(), 0.01), 0.1))
            try:
                chunk = self._channel.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                why = self._session.down_after_drop() if self._session is not None else None
                if why:
                    raise GuestWentDown(phase, f"{why}: the probe sent no {'/'.join(sorted(names))}") from None
                raise HarnessError(phase, f"SSH dropped while reading the probe: {exc}") from None
            if not chunk:
                why = self._session.down_after_drop() if self._session is not None else None
                if why:
                    raise GuestWentDown(phase, f"{why}: the probe sent no {'/'.join(sorted(names))}")
                if self._exit is not None:
                    # The shell's own last line: how the probe ended.
                    status = self._exit.get("status") if type(self._exit.get("status")) is int else None
                    raise ProbeExited(phase, f"probe exited (status {status}) "
                                             f"without {'/'.join(sorted(names))}", status)
                status = self._channel.recv_exit_status() if self._channel.exit_status_ready() else None
                if status == NO_EXIT_STATUS and not _connection_up(self._channel):
                    # The connection, not the probe, ended: what the probe did is unknown.
                    raise HarnessError(phase, f"SSH connection to the guest dropped while the probe ran (the guest "
                                              f"still up); its {'/'.join(sorted(names))} is lost")
                if status == NO_EXIT_STATUS:
                    # The channel ended without the shell's report or an exit status: how the probe ended
                    # is unknown, which is no verdict on the kernel.
                    raise ProbeExited(phase, f"the probe's channel closed without its "
                                             f"{'/'.join(sorted(names))} or an exit status", None)
                raise ProbeExited(phase, f"probe exited (status {status}) without {'/'.join(sorted(names))}", status)
            self._buffer += chunk

    def _noise(self, size: int, phase: str) -> None:
        self.noise += size
        self.longest = max(self.longest, size - 1)
        if self.noise > PROBE_NOISE_LIMIT:
            self.flood = (f"probe output flood: {self.noise >> 20} MiB on the probe's stream that are not its "
                          f"reports (lines of up to {self.longest} bytes); its answer can no longer be read")
            self.transcript.append(f"[{self.flood}: the harness stopped reading here]")
            raise ProbeFlood(phase, self.flood)

    def _forged(self, what: str) -> None:
        if len(self.forged) < 5:  # a flood of them is counted by the transcript, not kept here
            self.forged.append(what)
        self.transcript.append(f"   (ignored: {what}: not the probe the harness started)")

    def _own(self, message: dict) -> bool:
        pid = message.get("pid")
        return type(pid) is int and pid in self.owners

    def wait_exit(self, deadline: Deadline) -> int | None:
        """Wait until the probe's channel is closed on both sides; its exit status, or None.

        dropbear 2022.83 aborts the whole connection ("Failed assertion
        (common-channel.c:705): !channel->sent_close") when a new channel opens
        while another is closing, so nothing new is opened before this returns.
        """
        status = None
        try:
            self.read_event(set(), deadline, "observe")  # nothing is wanted but the stream's end
        except ProbeExited as exc:
            status = exc.status
        except HarnessError:
            return None
        while not self._channel.closed and not deadline.expired():
            try:
                self._channel.settimeout(max(deadline.remaining(), 0.01))
                if not self._channel.recv(65536) and self._channel.exit_status_ready():
                    self._channel.close()
            except (socket.timeout, TimeoutError, OSError, paramiko.SSHException):
                break
            deadline.sleep(0.005)
        return status

    def close(self) -> None:
        self._channel.close()


def _connection_up(channel: paramiko.Channel) -> bool:
    """The channel's own connection (a reconnect since opens a new one) is still up."""
    transport = channel.get_transport()
    return transport is not None and transport.is_active()


def _await_remote_close(channel: paramiko.Channel, deadline: Deadline, most_s: float = 5.0) -> None:
    """Wait (briefly) for the server's own close of a finished command's channel, as
    RemoteProcess.wait_exit does for the probe's: dropbear 2022.83 aborts the whole
    connection, and the probe's channel with it, when the next channel opens while
    this one is still closing (seen once with a guest under an event storm)."""
    end = Deadline(min(most_s, max(deadline.remaining(), 0.0)), "channel close")
    while not channel.closed and not end.expired():
        end.sleep(0.002)


def shown_pid(value) -> str:
    return str(value)[:20] if type(value) is int else repr(str(value)[:20])


def quote(value) -> str:
    return shlex.quote(str(value))
