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

    def fetch(self, debs_dir: Path, apt, progress) -> dict[str, Path]:
        """The .debs of debs(), downloaded into (or found in) debs_dir with `apt`, the host's."""
        from orchestrator.guest.images.apt import fetch_debs  # apt imports nothing of ours but errors
        return fetch_debs(self.debs(), debs_dir, apt, progress) if self.debs() else {}


def find_kernel_files(root: Path, release: str) -> tuple[Path, Path, Path | None]:
    """(vmlinuz, modules folder, config or None) of kernel `release` unpacked under `root`, in
    either of Debian's layouts:
    - one package (up to 6.x): boot/vmlinuz-REL, boot/config-REL, lib/modules/REL;
    - split (7.x): usr/lib/modules/REL/vmlinuz (linux-binary-REL), the modules beside it
      (linux-modules-REL), usr/lib/modules/REL/config (linux-base-REL).
    lib/ or usr/lib/ alike (a merged-/usr package may ship either)."""
    for moddir in (root / "lib/modules" / release, root / "usr/lib/modules" / release):
        for vmlinuz, config in ((root / "boot" / f"vmlinuz-{release}", root / "boot" / f"config-{release}"),
                                (moddir / "vmlinuz", moddir / "config")):
            if vmlinuz.is_file() and moddir.is_dir():
                return vmlinuz, moddir, config if config.is_file() else None
    raise ImageError(f"kernel {release}: neither /boot/vmlinuz-{release} with /lib/modules/{release} "
                     f"nor /usr/lib/modules/{release}/vmlinuz in the unpacked packages")


class DebianPackageKernel(KernelSource):
    """linux-image-RELEASE: from the host's apt, or from a suite of its own (PrivateApt), pinned or
    not. Up to 6.x one package holds everything; from 7.x linux-image-RELEASE is a metapackage and
    `parts` names linux-binary-, linux-modules- and linux-base-RELEASE (see find_kernel_files)."""

    def __init__(self, package: str, version: str, parts: Mapping[str, str] | None = None,
                 apt=None, suite: str | None = None, pin: Mapping[str, str] | None = None):
        self.package, self.version = package, version
        self.parts = dict(parts or {})
        self.apt, self.suite = apt, suite  # apt: a PrivateApt for a suite of its own; None: the host's
        self.pin = dict(pin or {})  # {package: sha256} the .debs must have
        self.release = package.removeprefix("linux-image-")

    def debs(self) -> dict[str, str]:
        return {self.package: self.version, **self.parts}

    def identity(self) -> dict:
        identity = {"package": self.package, "version": self.version}
        if self.parts:
            identity["parts"] = self.parts
        if self.suite:
            identity["suite"] = self.suite
        if self.pin:
            identity["sha256"] = self.pin
        return identity

    def describe(self) -> str:
        return f"{self.package} {self.version}" + (f" ({self.suite})" if self.suite else "")

    def unpack(self, work: Path, debs: Mapping[str, Path]) -> KernelFiles:
        work.mkdir(parents=True, exist_ok=True)
        for package in self.debs():
            deb = debs[package]
            run(["dpkg-deb", "-x", str(deb), str(work)], step=f"dpkg-deb -x {deb.name}")
        try:
            vmlinuz, moddir, config = find_kernel_files(work, self.release)
        except ImageError as e:
            raise ImageError(f"{', '.join(self.debs())}: {e}") from None
        return KernelFiles(vmlinuz, self.release, moddir, config.read_text() if config else None,
                           f"/{config.relative_to(work)} of {self.package} {self.version}" if config else None)


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
