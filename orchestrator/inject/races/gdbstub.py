"""A small client of QEMU's gdbstub (GDB Remote Serial Protocol), to hold vCPUs.

QEMU starts its gdbstub at run time on the HMP line `gdbserver DEVICE` (a chardev spec).
The harness gives it a unix socket in a private folder (never a TCP port: through gdb's
`monitor` packet the stub is a full HMP monitor, so whoever reaches it runs commands as QEMU's
user); see highorder.with_gdbstub.
Its breakpoints are TCG breakpoints (nothing in guest memory is written), a
breakpoint stops every vCPU, and `vCont;c:N` resumes only the listed vCPU
threads while the others stay stopped (QEMU's gdb_continue_partial). Thread
ids are the vCPU index + 1.

The packet functions are pure (encode, decode, parse); RemoteTarget is the
socket. Only what the high-order race needs is here: breakpoints, registers,
memory reads, partial continue and single step, interrupt, detach.
"""
from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

# x86_64 register numbers in QEMU's `g` reply (gdb's i386:x86-64 order), 8 bytes each.
X86_64_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
INTERRUPT = b"\x03"


STEP_TRIES = 3  # single steps of one instruction before a vCPU that does not move is an error


class GdbError(Exception):
    """The stub answered with an error, or not the way the protocol says."""


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(payload: bytes) -> bytes:
    """RSP escaping: '#', '$', '}' and '*' become '}' followed by the byte XOR 0x20."""
    out = bytearray()
    for b in payload:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo escapes and run-length encoding in one pass, as gdb does: '}' X is X ^ 0x20,
    and '*' N repeats the last byte (ord(N) - 29) more times (a '*' in data is escaped)."""
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x7D and i + 1 < len(data):
            out.append(data[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A and out and i + 1 < len(data):
            out += bytes((out[-1],)) * (data[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def encode_packet(payload: str | bytes) -> bytes:
    """'$payload#cs' with the payload escaped."""
    raw = escape(payload.encode() if isinstance(payload, str) else payload)
    return b"$" + raw + b"#" + f"{checksum(raw):02x}".encode()


def decode_packet(frame: bytes) -> bytes:
    """The payload of one '$...#cs' frame (checksum checked, escapes and RLE undone)."""
    if not frame.startswith(b"$") or len(frame) < 4 or frame[-3:-2] != b"#":
        raise GdbError(f"not a packet: {frame[:60]!r}")
    raw, cs = frame[1:-3], frame[-2:]
    try:
        expected = int(cs, 16)
    except ValueError:
        raise GdbError(f"unreadable checksum in {frame[:60]!r}") from None
    if checksum(raw) != expected:
        raise GdbError(f"bad checksum {cs.decode(errors='replace')} in {frame[:60]!r}")
    return unescape(raw)


def split_frame(buffer: bytes) -> tuple[bytes | None, bytes]:
    """(one complete '$...#cs' frame or None, the rest); bytes before '$' (acks) are dropped."""
    start = buffer.find(b"$")
    if start < 0:
        return None, b""
    end = buffer.find(b"#", start)
    if end < 0 or len(buffer) < end + 3:
        return None, buffer[start:]
    return buffer[start:end + 3], buffer[end + 3:]


@dataclass(frozen=True)
class StopReply:
    signal: int
    thread: int | None  # the vCPU thread that stopped (vCPU index + 1)


_STOP = re.compile(r"^T([0-9a-fA-F]{2})(.*)$")


def parse_stop_reply(payload: str) -> StopReply:
    """'T05thread:01;' (QEMU's form) or 'S05'."""
    if payload.startswith("S") and len(payload) == 3:
        return StopReply(int(payload[1:], 16), None)
    m = _STOP.match(payload)
    if not m:
        raise GdbError(f"not a stop reply: {payload[:60]!r}")
    thread = None
    for pair in m.group(2).split(";"):
        key, _, value = pair.partition(":")
        if key == "thread":
            thread = int(value.split(".")[-1].lstrip("p") or "0", 16)
    return StopReply(int(m.group(1), 16), thread)


def parse_registers(payload: str) -> dict[str, int]:
    """The general registers and rip from a `g` reply (little-endian hex, 8 bytes each)."""
    need = len(X86_64_REGISTERS) * 16
    if len(payload) < need or not re.fullmatch(r"[0-9a-fA-Fx]*", payload[:need]):
        raise GdbError(f"short or unreadable register reply ({len(payload)} hex digits)")
    return {name: int.from_bytes(bytes.fromhex(payload[i * 16:(i + 1) * 16]), "little")
            for i, name in enumerate(X86_64_REGISTERS)}


def parse_memory(payload: str, length: int) -> bytes:
    if payload.startswith("E"):
        raise GdbError(f"memory read refused ({payload})")
    try:
        data = bytes.fromhex(payload)
    except ValueError:
        raise GdbError(f"unreadable memory reply {payload[:60]!r}") from None
    if len(data) != length:
        raise GdbError(f"memory reply of {len(data)} bytes, asked for {length}")
    return data


def read_memory_packet(address: int, length: int) -> str:
    return f"m{address:x},{length:x}"


def breakpoint_packet(address: int, insert: bool) -> str:
    return f"{'Z' if insert else 'z'}0,{address:x},1"


def vcont_packet(action: str, threads: tuple[int, ...] = ()) -> str:
    """'vCont;c' (every thread) or 'vCont;c:1;c:3' (only those; the others stay stopped)."""
    if action not in ("c", "s"):
        raise ValueError(f"vCont action {action!r}")
    return "vCont;" + (";".join(f"{action}:{t:x}" for t in threads) if threads else action)


class RemoteTarget:
    """One connection to a gdbstub: send a packet, wait for its reply, with a deadline."""

    def __init__(self, path: str, timeout: float = 10.0):
        """`path`: the stub's unix socket."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buffer = b""
        self.transcript: list[str] = []
        self.running = False  # a resume was sent and its stop reply not yet read

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _receive(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while True:
            frame, self.buffer = split_frame(self.buffer)
            if frame is not None:
                self.sock.sendall(b"+")
                payload = decode_packet(frame).decode("latin-1")
                self.transcript.append(f"<- {payload[:200]}")
                return payload
            left = end - time.monotonic()
            if left <= 0:
                raise GdbError(f"no reply from the gdbstub within {timeout:g} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise GdbError("the gdbstub closed the connection")
            self.buffer += chunk

    def request(self, payload: str, timeout: float = 10.0) -> str:
        self.transcript.append(f"-> {payload}")
        self.sock.sendall(encode_packet(payload))
        return self._receive(timeout)

    def checked(self, payload: str, timeout: float = 10.0) -> None:
        reply = self.request(payload, timeout)
        if reply != "OK":
            raise GdbError(f"{payload!r} answered {reply!r}")

    def send_resume(self, payload: str) -> None:
        """A resume packet: its reply is a stop reply, read later by wait_stop()."""
        self.transcript.append(f"-> {payload}")
        self.sock.sendall(encode_packet(payload))
        self.running = True

    def attach(self, timeout: float = 5.0) -> StopReply:
        """The stop reply of a freshly connected debugger, asked for with `?`.

        QEMU stops the VM when a debugger connects. Up to 7.2 it also sends an unasked stop
        reply then (`T02thread:01;`, before anything the client sends is read); since QEMU 8 it
        sends none until asked (`allow_stop_reply`). So: ask with `?`, take the first stop
        reply, then send `qC` and drop every stop reply before its `QC` answer (on 7.2 that is
        the answer to `?`, the first having been the unasked one). No wait on a reply that may
        never come, and nothing stale left to be read as the answer to a later packet."""
        self.transcript.append("-> ?")
        self.sock.sendall(encode_packet("?"))
        stop = parse_stop_reply(self._receive(timeout))
        self.transcript.append("-> qC")
        self.sock.sendall(encode_packet("qC"))
        while True:
            payload = self._receive(timeout)
            if payload.startswith("QC"):
                self.running = False
                return stop
            try:
                stop = parse_stop_reply(payload)
            except GdbError:
                raise GdbError(f"'qC' answered {payload[:60]!r}") from None

    def wait_stop(self, timeout: float) -> StopReply:
        stop = parse_stop_reply(self._receive(timeout))
        self.running = False
        return stop

    def interrupt(self, timeout: float = 5.0) -> StopReply:
        self.transcript.append("-> ^C")
        self.sock.sendall(INTERRUPT)
        return self.wait_stop(timeout)

    def registers(self, thread: int) -> dict[str, int]:
        self.checked(f"Hg{thread:x}")
        return parse_registers(self.request("g"))

    def read(self, address: int, length: int) -> bytes:
        return parse_memory(self.request(read_memory_packet(address, length)), length)

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def set_breakpoint(self, address: int, insert: bool = True) -> None:
        self.checked(breakpoint_packet(address, insert))

    def detach(self) -> None:
        """QEMU removes every breakpoint and resumes all vCPUs when its last debugger detaches."""
        self.checked("D")


def step_over(target, thread: int, address: int, tries: int = STEP_TRIES) -> None:
    """`thread`, stopped at the breakpoint at `address`, executes that one instruction (the
    others stay stopped; QEMU would stop at the breakpoint again) and the breakpoint goes
    back. A step that did not move the vCPU (seen now and then under TCG) is tried again;
    one that never does is a GdbError."""
    target.set_breakpoint(address, insert=False)
    try:
        for _ in range(tries):
            target.send_resume(vcont_packet("s", (thread,)))
            stop = target.wait_stop(5)
            if stop.thread == thread and target.registers(thread)["rip"] != address:
                return
        raise GdbError(f"vCPU {thread - 1} did not step past {address:#x} in {tries} single steps")
    finally:
        target.set_breakpoint(address)
