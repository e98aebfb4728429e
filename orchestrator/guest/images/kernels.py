"""Where an image's kernel comes from, behind one interface: a Debian kernel package, or a
kernel the user built (a bzImage, a vmlinux, or a build tree, with modules from the tree or
from an INSTALL_MOD_PATH install).

The builder asks a source for the .debs it needs fetched, for an identity that changes
whenever the kernel does (it goes into the image digest, and so into the snapshot key), and
then for the unpacked files.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.guest.images import bzimage

from orchestrator.guest.images.errors import ImageError, run

from orchestrator.guest.images.modules import MODULE_SUFFIXES
from orchestrator.plumbing.digest import file_sha256



@dataclass(frozen=True)
class KernelFiles:
    """A kernel ready for the builder."""
    image: Path             # a bzImage or an ELF vmlinux
    release: str            # uname -r
    modules: Path | None    # what modules.add_modules walks; None: no modules
    config: str | None      # the kernel's .config, when known
    config_source: str | None = None  # where that .config was read (a file, or IKCONFIG in the image)


class KernelSource(ABC):
    @abstractmethod
    def debs(self) -> dict[str, str]:
        """{package: version} the builder must fetch for this kernel."""

    @abstractmethod
    def identity(self) -> dict:
        """What the image digest is keyed on: changes whenever the kernel does."""

    @abstractmethod
    def unpack(self, work: Path, debs: Mapping[str, Path]) -> KernelFiles:
        """The kernel's files, unpacked into `work` where needed."""

    @abstractmethod
    def describe(self) -> str:
        """One line for progress and the manifest."""


class DebianPackageKernel(KernelSource):
    """linux-image-RELEASE from apt: /boot/vmlinuz-RELEASE, /boot/config-RELEASE and /lib/modules/RELEASE."""

    def __init__(self, package: str, version: str):
        self.package, self.version = package, version
        self.release = package.removeprefix("linux-image-")

    def debs(self) -> dict[str, str]:
        return {self.package: self.version}

    def identity(self) -> dict:
        return {"package": self.package, "version": self.version}

    def describe(self) -> str:
        return f"{self.package} {self.version}"

    def unpack(self, work: Path, debs: Mapping[str, Path]) -> KernelFiles:
        work.mkdir(parents=True, exist_ok=True)
        deb = debs[self.package]
        run(["dpkg-deb", "-x", str(deb), str(work)], step=f"dpkg-deb -x {deb.name}")
        vmlinuz = work / "boot" / f"vmlinuz-{self.release}"
        moddir = work / "lib/modules" / self.release
        if not vmlinuz.is_file() or not moddir.is_dir():
            raise ImageError(f"{self.package}: no /boot/vmlinuz-{self.release} and /lib/modules/{self.release}")
        config = work / "boot" / f"config-{self.release}"
        return KernelFiles(vmlinuz, self.release, moddir, config.read_text() if config.is_file() else None,
                           f"/boot/config-{self.release} of {self.package} {self.version}"
                           if config.is_file() else None)


def _modules_fingerprint(moddir: Path) -> str:
    # Every module's path, size and mtime, and depmod's files: reading hundreds of MiB of
    # .ko files on every run would cost more than the boot.
    h = hashlib.sha256()
    for dirpath, dirnames, names in os.walk(moddir):
        dirnames.sort()
        for n in sorted(names):
            if n.endswith(MODULE_SUFFIXES) or n in ("modules.builtin", "modules.dep", "modules.order"):
                st = os.stat(os.path.join(dirpath, n))
                h.update(f"{os.path.relpath(os.path.join(dirpath, n), moddir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class LocalKernel(KernelSource):
    """A kernel the user built: PATH is a bzImage, a vmlinux (with a PVH note), or a build
    tree (arch/x86/boot/bzImage, .config, and its .ko files unless `modules` is given).
    `modules` is an INSTALL_MOD_PATH (holding lib/modules/RELEASE) or that folder itself."""

    def __init__(self, path: Path, modules: Path | None = None):
        self.path = Path(path).resolve()
        self.modules_arg = Path(modules).resolve() if modules is not None else None
        if self.path.is_dir():
            self.tree: Path | None = self.path
            self.kernel = self.path / "arch/x86/boot/bzImage"
            if not self.kernel.is_file():
                raise ImageError(f"--kernel {path}: a build tree needs arch/x86/boot/bzImage (run make first)")
        elif self.path.is_file():
            self.tree, self.kernel = None, self.path
        else:
            raise ImageError(f"--kernel {path}: no such file or folder")
        head = self.kernel.read_bytes()
        self.release = self._release(head)
        self.moddir = self._moddir()

    def _release(self, data: bytes) -> str:
        if not (bzimage.is_bzimage(data) or data[:4] == b"\x7fELF"):
            raise ImageError(f"--kernel {self.kernel}: neither a bzImage nor an ELF vmlinux")
        found = bzimage.kernel_release(data)
        if not found and self.tree is not None and (self.tree / "include/config/kernel.release").is_file():
            found = (self.tree / "include/config/kernel.release").read_text().strip()
        if not found:
            raise ImageError(f"--kernel {self.kernel}: no version string in it (bzImage header or linux_banner)")
        return found

    def _moddir(self) -> Path | None:
        if self.modules_arg is not None:
            for candidate in (self.modules_arg / "lib/modules" / self.release, self.modules_arg):
                if candidate.is_dir() and candidate.name == self.release:
                    return candidate
            raise ImageError(f"--modules {self.modules_arg}: no lib/modules/{self.release} in it "
                             f"(the kernel is {self.release})")
        return self.tree  # a build tree's modules sit beside their sources; a lone file has none

    def config_candidates(self) -> list[Path]:
        """Where kernels keep their .config, in the order looked at: a build tree's
        .config; config-RELEASE beside the image (a distribution's /boot); `config`
        beside a vmlinuz in lib/modules/RELEASE or in the modules folder (Debian from
        7.x); the modules' `build` link to the tree they were built in."""
        found = [self.tree / ".config"] if self.tree is not None else []
        found.append(self.kernel.parent / f"config-{self.release}")
        if self.kernel.parent.name == self.release:
            found.append(self.kernel.parent / "config")
        if self.moddir is not None and self.moddir != self.tree:
            found += [self.moddir / "config", self.moddir / "build" / ".config"]
        return found

    def config_file(self) -> tuple[str, str] | None:
        """(the kernel's .config, where it was read), or None when no config is found."""
        for candidate in self.config_candidates():
            if candidate.is_file():
                return candidate.read_text(), str(candidate)
        embedded = bzimage.embedded_config(self.kernel.read_bytes())
        return (embedded, f"IKCONFIG in {self.kernel}") if embedded else None

    def config(self) -> str | None:
        found = self.config_file()
        return found[0] if found else None

    def debs(self) -> dict[str, str]:
        return {}

    def identity(self) -> dict:
        config = self.config()
        return {"kernel_sha256": file_sha256(self.kernel), "release": self.release,
                "config_sha256": hashlib.sha256(config.encode()).hexdigest() if config else None,
                "modules": _modules_fingerprint(self.moddir) if self.moddir else None}

    def describe(self) -> str:
        return f"{self.kernel} ({self.release})" + (f", modules from {self.moddir}" if self.moddir else "")

    def unpack(self, work: Path, debs: Mapping[str, Path]) -> KernelFiles:
        found = self.config_file()
        return KernelFiles(self.kernel, self.release, self.moddir, *(found or (None, None)))
