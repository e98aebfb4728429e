"""Bounded keeping of whatever a guest sends: the first and the last parts, and a
clear marker of what was cut in between."""
from __future__ import annotations

import os
from pathlib import Path


def truncated_marker(cut: int) -> bytes:
    return f"\n[... mce-orchestrator: {cut} bytes truncated here ...]\n".encode()


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
