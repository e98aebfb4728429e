"""An in-memory newc (cpio) archive, the initramfs format, and its compression."""
from __future__ import annotations

import gzip

from orchestrator.guest.images.errors import run


class Cpio:
    """An in-memory newc archive: owner root, modes as given, parents made implicitly."""

    def __init__(self) -> None:
        # path (no leading /) -> (mode incl. type bits, data, rdev major, rdev minor)
        self.entries: dict[str, tuple[int, bytes, int, int]] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                self.entries[parent] = (0o040755, b"", 0, 0)

    def directory(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (0o040000 | mode, b"", 0, 0)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (0o100000 | mode, data, 0, 0)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (0o120777, target.encode(), 0, 0)

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (0o020000 | mode, b"", major, minor)

    def serialize(self) -> bytes:
        out = bytearray()

        def pad() -> None:
            out.extend(b"\0" * (-len(out) % 4))

        def entry(ino: int, name: str, mode: int, data: bytes, major: int, minor: int) -> None:
            raw = name.encode() + b"\0"
            nlink = 2 if mode & 0o170000 == 0o040000 else 1
            fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(raw), 0)
            out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
            out.extend(raw)
            pad()
            out.extend(data)
            pad()

        # Sorted, a directory always precedes its contents.
        for ino, path in enumerate(sorted(self.entries), start=1):
            mode, data, major, minor = self.entries[path]
            entry(ino, path, mode, data, major, minor)
        entry(0, "TRAILER!!!", 0, b"", 0, 0)
        return bytes(out)


def compress(data: bytes, method: str) -> bytes:
    if method == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if method == "zstd":
        # The kernel's zstd decompressor needs a bounded window: do not use --long/--ultra.
        return run(["zstd", "-q", "-19", "-c", "-"], step="compressing initramfs", input=data, text=False)
    return data
