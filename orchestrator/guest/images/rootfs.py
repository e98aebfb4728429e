"""Files unpacked from Debian packages, copied into the initramfs with what they need."""
from __future__ import annotations

import os
from pathlib import Path

from orchestrator.guest.images import elf
from orchestrator.guest.images.cpio import Cpio
from orchestrator.guest.images.errors import ImageError, run


class UnpackedRoot:
    """Files unpacked from Debian packages, copied into the initramfs with their symlinks."""

    LIBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")

    def __init__(self, root: Path, cpio: Cpio) -> None:
        self.root = root
        self.cpio = cpio
        self.added: set[str] = set()

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.root / rel.strip("/"))

    def resolve(self, rel: str) -> str:
        """Follow symlinks inside the unpacked tree (absolute targets mean the tree's root)."""
        rel = rel.strip("/")
        for _ in range(40):
            path = self.root / rel
            if not path.is_symlink():
                return rel
            target = os.readlink(path)
            rel = os.path.normpath(
                target.lstrip("/") if target.startswith("/") else os.path.join(os.path.dirname(rel), target)
            )
        raise ImageError(f"symlink loop at {rel} in the unpacked packages")

    def add(self, rel: str, mode: int | None = None) -> str:
        """Copy a file (a symlink as a symlink, plus what it points to); return the real path."""
        rel = rel.strip("/")
        path = self.root / rel
        if path.is_symlink():
            self.cpio.symlink(rel, os.readlink(path))
            self.added.add(rel)
            target = self.resolve(rel)
            return self.add(target, mode)
        if not path.is_file():
            raise ImageError(f"unpacked packages lack /{rel}")
        if rel not in self.added:
            self.cpio.file(rel, path.read_bytes(), mode if mode is not None else path.stat().st_mode & 0o7777)
            self.added.add(rel)
        return rel

    def find_library(self, soname: str, needed_by: str) -> str:
        for d in self.LIBDIRS:
            if self.exists(f"{d}/{soname}"):
                return f"{d}/{soname}"
        raise ImageError(f"{soname} (needed by {needed_by}) is in none of the unpacked packages")

    def add_executable(self, rel: str) -> None:
        """An ELF program with its interpreter and every library it needs, recursively."""
        queue = [rel]
        seen: set[str] = set()
        while queue:
            item = queue.pop()
            real = self.add(item)
            if real in seen:
                continue
            seen.add(real)
            interp, needed = elf.interp_and_needed((self.root / real).read_bytes(), f"/{real}")
            if interp:
                queue.append(interp)
            queue.extend(self.find_library(so, f"/{real}") for so in needed)

    def run(self, program: str, *args: str, step: str) -> str:
        """Run a dynamically linked program from the unpacked tree with its own libc."""
        loader = self.root / self.resolve("lib64/ld-linux-x86-64.so.2")
        libpath = ":".join(str(self.root / d) for d in self.LIBDIRS[:2])
        return run([str(loader), "--library-path", libpath, str(self.root / program), *args], step=step)
