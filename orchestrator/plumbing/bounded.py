"""Bounded keeping of whatever a guest sends: the first and the last parts, and a
clear marker of what was cut in between."""
from __future__ import annotations

import collections
import os
import socket
import threading
import weakref
from pathlib import Path


TRUNCATED = "bytes truncated here by mce-orchestrator"


def truncated_marker(cut: int) -> bytes:
    return f"\n[... {cut} {TRUNCATED} ...]\n".encode()


class HeadTail:
    """Keeps the first and last `limit // 2` bytes of a stream, and counts the rest."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.half:  # trim now and then, not on every chunk
                del self.tail[:-self.half]

    @property
    def cut(self) -> int:
        return self.total - len(self.head) - min(len(self.tail), self.half)

    def value(self) -> bytes:
        tail = bytes(self.tail[-self.half:])
        if not self.cut:
            return bytes(self.head) + tail
        return bytes(self.head) + truncated_marker(self.cut) + tail


def cap_file(path: Path, limit: int) -> int:
    """Cut a file that grew past `limit` bytes down to its first and last parts with a
    marker between; the bytes cut (0 when it was within the limit or is missing)."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if size <= limit:
        return 0
    half = limit // 2
    with path.open("r+b") as f:
        f.seek(size - half)
        tail = f.read(half)
        cut = size - half - len(tail)
        f.seek(half)
        f.write(truncated_marker(cut) + tail)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
    return cut


def read_head_tail(path: Path, limit: int) -> str:
    """A text file's first and last `limit // 2` bytes, with a marker between when it is longer."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if size <= limit:
                return f.read().decode(errors="replace")
            half = limit // 2
            head = f.read(half)
            f.seek(size - half)
            return (head + truncated_marker(size - 2 * half) + f.read(half)).decode(errors="replace")
    except OSError:
        return ""


class ConsoleRecorder:
    """The serial console, read from QEMU over a socket and written to a file capped at
    `limit` bytes: past it the file keeps its first `limit // 4` bytes, a 'truncated'
    marker and the latest part, so it never holds more than `limit`. More than `limit`
    bytes in all is named a console flood. We are the file's only writer: no race."""

    def __init__(self, sock: socket.socket, path: Path, limit: int, keep_existing: bool = False):
        self._sock = sock
        self.path = path
        self.limit = limit
        self.head = limit // 4
        self.total = 0
        self.cut = 0
        self._marker_len = 0
        self.error: str | None = None
        # keep_existing: a restored guest's console.log already starts with the saving
        # boot's console (snapshot.py); the restored guest's output follows it.
        self._file = path.open("r+b" if keep_existing and path.exists() else "w+b")
        # Offsets in the stream of everything written (the file's bytes before ours
        # included) stay valid across cuts, so a reader (read_from) never skips what the
        # file still holds: the stream's [0, head) and [tail_start, written) are in it.
        self.written = self._file.seek(0, 2)
        self.tail_start: int | None = None  # None until the first cut
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        _recorders[str(path)] = self

    def start(self) -> None:
        self._thread.start()

    @property
    def flood(self) -> str | None:
        if not self.cut:
            return None
        return (f"console flood: {self.total >> 20} MiB on the serial console; console.log keeps the first "
                f"{self.head >> 20} MiB and the latest part ({self.cut} bytes cut)")

    def _run(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            self.total += len(data)
            try:
                with self._lock:
                    self._file.write(data)
                    self._file.flush()
                    self.written += len(data)
                    if self._file.tell() > self.limit:
                        self._cap()
            except OSError as exc:  # a full disk: keep reading, or QEMU's serial port would block
                self.error = self.error or f"{exc.strerror}: {self.path}"

    def _cap(self) -> None:
        size = self._file.tell()
        keep = self.limit // 2 - self.head
        self._file.seek(size - keep)
        tail = self._file.read(keep)
        self.cut += size - self.head - self._marker_len - len(tail)
        marker = truncated_marker(self.cut)
        self._marker_len = len(marker)
        self._file.seek(self.head)
        self._file.write(marker + tail)
        self._file.truncate()
        self._file.flush()
        self.tail_start = self.written - len(tail)

    def read_from(self, position: int, most: int) -> tuple[bytes, int, int]:
        """Up to `most` bytes of the stream from `position`, as the file holds them now:
        (data, the position after it, bytes the cut took from the reader (0 mostly))."""
        with self._lock:
            with self.path.open("rb") as f:
                if self.tail_start is None or position < self.head:
                    end = self.head if self.tail_start is not None else self.written
                    f.seek(position)
                    data = f.read(min(most, max(end - position, 0)))
                    return data, position + len(data), 0
                lost = max(self.tail_start - position, 0)
                position = max(position, self.tail_start)
                f.seek(self.head + self._marker_len + position - self.tail_start)
                data = f.read(most)
                return data, position + len(data), lost

    def close(self) -> None:
        """After QEMU has gone: read what is left, then close."""
        self._thread.join(2)
        self._sock.close()
        self._thread.join(1)
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or f"{exc.strerror}: {self.path}"


_recorders: "weakref.WeakValueDictionary[str, ConsoleRecorder]" = weakref.WeakValueDictionary()


def recorder_for(path: Path) -> ConsoleRecorder | None:
    """The recorder writing `path` (this process's QEMU guests), if any."""
    return _recorders.get(str(path))


class LineLog(list):
    """A list of text lines that keeps its first `head` lines and its last `tail` lines,
    and in bytes at most `head_bytes` of the first and `tail_bytes` of the last, each line
    cut to `line_bytes` (what was cut between is counted and shown by `lines()`)."""

    def __init__(self, head: int = 5000, tail: int = 5000, head_bytes: int = 2 << 20, tail_bytes: int = 2 << 20,
                 line_bytes: int = 256 << 10):
        super().__init__()
        self.head = head
        self.head_bytes = head_bytes
        self.tail_bytes = tail_bytes
        self.line_bytes = line_bytes
        self.cut = 0
        self._kept = 0          # bytes in the head
        self._tail_kept = 0     # bytes in the tail
        self._tail: collections.deque = collections.deque(maxlen=tail)

    def append(self, line: str) -> None:
        if len(line) > self.line_bytes:
            line = line[:self.line_bytes] + f"... (line cut: {len(line)} characters)"
        if len(self) < self.head and self._kept + len(line) <= self.head_bytes:
            super().append(line)
            self._kept += len(line)
            return
        if len(self._tail) == self._tail.maxlen:
            self.cut += 1
            self._tail_kept -= len(self._tail[0])
        self._tail.append(line)
        self._tail_kept += len(line)
        while self._tail_kept > self.tail_bytes and len(self._tail) > 1:
            self.cut += 1
            self._tail_kept -= len(self._tail.popleft())

    def lines(self) -> list[str]:
        marker = [f"[... {self.cut} lines truncated here by mce-orchestrator ...]"] if self.cut else []
        return list(self) + marker + list(self._tail)
