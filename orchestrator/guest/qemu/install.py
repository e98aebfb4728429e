"""Which QEMU runs the guests: the system's, a binary by path (a distribution's or a QEMU build
tree's), or a named one the project provides (guest-images/qemus.yaml: pinned Debian packages,
fetched with a private apt configuration and unpacked beside the system's QEMU, never over it).

A QEMU's firmware search path is compiled in (Debian's: /usr/share/qemu:/usr/share/seabios):
an unpacked package or a build tree would silently load the system QEMU's ROMs, so
firmware_layout() gives the -L folders and the qboot.rom of the chosen binary's own tree.

    python3 -m orchestrator.guest.qemu.install NAME      fetch and unpack NAME (make qemu QEMU=NAME)
    python3 -m orchestrator.guest.qemu.install --show NAME   what the archive has now (to move a pin)
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import yaml

# PrivateApt is shared with the kernel images of other suites (orchestrator/guest/images/apt.py).
from orchestrator.guest.images.apt import PrivateApt, host_mirror  # noqa: F401 (host_mirror: re-exported)
from orchestrator.guest.images.cache import build_lock
from orchestrator.guest.images.errors import ImageError, run
from orchestrator.plumbing.digest import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[3]
QEMUS_FILE = REPO_ROOT / "guest-images" / "qemus.yaml"
SYSTEM_QEMU = "qemu-system-x86_64"
SYSTEM_QBOOT = Path("/usr/share/qemu/qboot.rom")
BINARY_IN_PACKAGE = Path("usr/bin/qemu-system-x86_64")


class QemuError(ImageError):
    """A QEMU that cannot be found, fetched or checked (an input error: one line)."""


@lru_cache(maxsize=None)
def qemu_version(binary: str) -> str:
    """'10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)' from `BINARY --version`; 'unknown' if it
    does not run."""
    path = shutil.which(binary) or binary
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out.strip() else ""
    m = re.search(r"version\s+(.+)$", first)
    return m.group(1).strip() if m else (first.strip() or "unknown")


def firmware_layout(binary: str) -> tuple[tuple[Path, ...], Path | None]:
    """(-L folders, qboot.rom or None) of the QEMU tree `binary` belongs to:
    - ROOT/usr/bin/qemu-system-x86_64 of an unpacked package (ROOT not /): ROOT/usr/share/qemu
      and ROOT/usr/share/seabios, and that tree's qboot.rom;
    - a QEMU build tree (pc-bios/ beside the binary or one folder up): that pc-bios/;
    - anything else (the system's QEMU): no -L, /usr/share/qemu/qboot.rom if there."""
    path = Path(shutil.which(binary) or binary).absolute()
    if path.parent.name == "bin" and path.parent.parent.name == "usr":
        root = path.parents[2]
        share = root / "usr" / "share"
        if root != Path("/") and (share / "qemu").is_dir():
            folders = tuple(d for d in (share / "qemu", share / "seabios") if d.is_dir())
            qboot = share / "qemu" / "qboot.rom"
            return folders, qboot if qboot.is_file() else None
    for pc_bios in (path.parent / "pc-bios", path.parent.parent / "pc-bios"):
        if pc_bios.is_dir():
            qboot = pc_bios / "qboot.rom"
            return (pc_bios,), qboot if qboot.is_file() else None
    return (), SYSTEM_QBOOT if SYSTEM_QBOOT.is_file() else None


def load_pins(path: Path = QEMUS_FILE) -> dict[str, dict]:
    try:
        pins = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise QemuError(f"{path}: {exc.strerror or exc}") from None
    for name, pin in pins.items():
        if not isinstance(pin, dict) or not {"suite", "version", "packages"} <= set(pin):
            raise QemuError(f"{path}: {name}: needs suite, version and packages (name: sha256)")
    return pins


def install_folder(cache_root: Path, name: str, version: str) -> Path:
    return cache_root / "qemu" / f"{name}-{version.replace(':', '_')}"


def moved_pin_error(name: str, pin: dict, package: str, found: str | None) -> QemuError:
    return QemuError(f"QEMU {name}: {package} {pin['version']} is no longer in {pin['suite']} "
                     f"(it has {found or 'no version'}): move the pin in {QEMUS_FILE.relative_to(REPO_ROOT)} "
                     f"(python3 -m orchestrator.guest.qemu.install --show {name} prints the new version "
                     f"and SHA-256s)")


def ensure_qemu(name: str, cache_root: Path, progress: Callable[[str], None] = lambda _: None,
                pins: dict | None = None, apt: PrivateApt | None = None) -> Path:
    """The binary of named QEMU `name`, fetched, checked and unpacked on first use."""
    pins = load_pins() if pins is None else pins
    cache_root = cache_root.resolve()
    if name not in pins:
        raise QemuError(f"--qemu {name}: not a path and not a QEMU in {QEMUS_FILE.relative_to(REPO_ROOT)} "
                        f"(one of: {', '.join(pins) or 'none'})")
    pin = pins[name]
    folder = install_folder(cache_root, name, pin["version"])
    binary = folder / BINARY_IN_PACKAGE
    if binary.is_file():
        return binary
    (cache_root / "qemu").mkdir(parents=True, exist_ok=True)
    with build_lock(cache_root / "qemu" / f".{name}.lock", progress):
        if binary.is_file():
            return binary
        apt = apt or PrivateApt(cache_root / "qemu" / "apt" / pin["suite"], pin["suite"])
        progress(f"QEMU {name}: apt-get update ({pin['suite']}, a private apt configuration)")
        apt.update()
        for package in pin["packages"]:
            if apt.sha256(package, pin["version"]) is None:
                raise moved_pin_error(name, pin, package, apt.candidate(package))
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_root / "qemu"))
        try:
            progress(f"QEMU {name}: downloading {', '.join(pin['packages'])} {pin['version']}")
            apt.download([f"{p}={pin['version']}" for p in pin["packages"]], tmp)
            tree = tmp / "tree"
            for package, expected in pin["packages"].items():
                debs = list(tmp.glob(f"{package}_*.deb"))
                if len(debs) != 1:
                    raise QemuError(f"QEMU {name}: apt-get download gave no {package} .deb")
                got = file_sha256(debs[0])
                if got != expected:
                    raise QemuError(f"QEMU {name}: {debs[0].name} has SHA-256 {got}, the pin says {expected}")
                run(["dpkg-deb", "-x", str(debs[0]), str(tree)], step=f"dpkg-deb -x {debs[0].name}")
            if not (tree / BINARY_IN_PACKAGE).is_file():
                raise QemuError(f"QEMU {name}: no {BINARY_IN_PACKAGE} in the unpacked packages")
            os.replace(tree, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    progress(f"QEMU {name}: {qemu_version(str(binary))} in {folder}")
    return binary


def resolve_qemu(spec: str | None, cache_root: Path, progress: Callable[[str], None] = lambda _: None) -> str:
    """--qemu PATH|NAME -> the binary to run: a file (or a build tree holding
    qemu-system-x86_64, or its build/ folder), else a named QEMU from qemus.yaml."""
    if not spec:
        return SYSTEM_QEMU
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / "qemu-system-x86_64", path / "build" / "qemu-system-x86_64",
                          path / BINARY_IN_PACKAGE):
            if candidate.is_file():
                return str(candidate.resolve())
        raise QemuError(f"--qemu {spec}: no qemu-system-x86_64 in that folder (nor in build/)")
    if path.is_file():
        if not os.access(path, os.X_OK):
            raise QemuError(f"--qemu {spec}: not executable")
        return str(path.resolve())
    if "/" in spec:
        raise QemuError(f"--qemu {spec}: no such file")
    return str(ensure_qemu(spec, cache_root, progress))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m orchestrator.guest.qemu.install", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--show", action="store_true", help="print what the suite has now, to move the pin")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "guest-images" / ".cache")
    args = parser.parse_args(argv)
    progress = lambda text: print(f"[qemu] {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.show:
            pin = load_pins()[args.name]
            apt = PrivateApt(args.cache / "qemu" / "apt" / pin["suite"], pin["suite"])
            apt.update()
            version = apt.candidate(next(iter(pin["packages"])))
            print(f'  version: "{version}"')
            for package in pin["packages"]:
                print(f"    {package}: {apt.sha256(package, version) if version else 'absent'}")
            return 0
        binary = ensure_qemu(args.name, args.cache, progress)
    except (ImageError, KeyError) as exc:
        print(f"mce-orchestrator: {exc}", file=sys.stderr)
        return 2
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
