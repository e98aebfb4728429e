"""Kernel modules for the initramfs: names, dependency closure in load order, .modinfo,
decompression, and the files /init and busybox modprobe read."""
from __future__ import annotations

import gzip
import lzma
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from orchestrator.guest.images import elf
from orchestrator.guest.images.cpio import Cpio
from orchestrator.guest.images.errors import ImageError, run

# Loaded by /init in this order (each after its dependencies). virtio_pci comes
# first so the NIC exists when virtio_net binds. crc32c_generic is not a hard
# dependency of ext4 (it asks the crypto API for "crc32c" at mount time), so it is
# listed explicitly. nd_e820 and nd_pmem turn a memmap=SIZE!OFFSET range of guest RAM
# into /dev/pmem0, a DAX-capable device (the dax-page scenario); without such a range
# they load and find nothing. fuse: the probe serves a FUSE file system of its own (the
# fuse-mlock kinds; built in on 6.12). Modules missing from a kernel, or built in, are skipped.
DEFAULT_MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "pvpanic_pci",
    "hwpoison_inject",
    "nd_e820",
    "nd_pmem",
    "fuse",
)
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name(path: str) -> str:
    """'kernel/mm/hwpoison-inject.ko.xz' -> 'hwpoison_inject' (the kernel treats - and _ alike)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES[::-1]:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """depmod's modules.dep ('path: dep-path ...') -> {module name: [direct+indirect dep names]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        target, rest = line.split(":", 1)
        deps[module_name(target.strip())] = [module_name(d) for d in rest.split()]
    return deps


def module_closure(
    requested: Iterable[str], depends_of: Callable[[str], Sequence[str] | None]
) -> tuple[list[str], list[str]]:
    """Modules to load, each after its dependencies, and the requested ones that do not exist.

    depends_of(name) gives a module's dependencies, or None if the kernel has no such module.
    """
    order: list[str] = []
    missing: list[str] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in chain:
            raise ImageError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        deps = depends_of(name)
        if deps is None:
            raise ImageError(f"module {chain[-1]} needs {name}, which the kernel package lacks")
        for dep in deps:
            visit(dep.replace("-", "_"), chain + (name,))
        done.add(name)
        order.append(name)

    for raw in requested:
        name = raw.replace("-", "_")
        if name in done:
            continue
        if depends_of(name) is None:
            missing.append(name)
            continue
        visit(name, ())
    return order, missing


def transitive_deps(name: str, deps: Mapping[str, Sequence[str]]) -> list[str]:
    # modules.dep lists every indirect dependency too, the one to load first last.
    seen: list[str] = []

    def walk(n: str) -> None:
        for d in deps[n]:
            if d not in seen:
                walk(d)
                seen.append(d)

    walk(name)
    return seen[::-1]


def modinfo(ko: bytes, what: str = "module") -> dict[str, list[str]]:
    """The key=value strings of a module's .modinfo section."""
    info: dict[str, list[str]] = {}
    section = elf.section(ko, ".modinfo", what) or b""
    for item in section.split(b"\0"):
        if b"=" in item:
            key, value = item.decode(errors="replace").split("=", 1)
            info.setdefault(key, []).append(value)
    return info


def read_module(path: Path) -> bytes:
    # Debian's 6.12 kernels ship .ko.xz; busybox insmod wants plain .ko.
    name = path.name
    try:
        if name.endswith(".xz"):
            return lzma.decompress(path.read_bytes())
        if name.endswith(".gz"):
            return gzip.decompress(path.read_bytes())
        if name.endswith(".zst"):
            return run(["zstd", "-dc", str(path)], step=f"decompressing {name}", text=False)
        return path.read_bytes()
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise ImageError(f"decompressing module {name}: {e}") from None


def add_modules(
    moddir: Path, release: str, requested: Sequence[str], cpio: Cpio, progress
) -> tuple[list[str], list[str]]:
    """Copy the requested modules and their dependencies (uncompressed) into the initramfs;
    return (modules in load order, requested modules skipped).

    moddir: an installed /lib/modules/RELEASE (from a package or INSTALL_MOD_PATH), or a
    kernel build tree (its .ko files beside their sources, modules.builtin at the top)."""
    files: dict[str, str] = {}  # module name -> path relative to moddir
    # os.walk does not follow the build/source symlinks of an installed module folder.
    for dirpath, _, names in os.walk(moddir):
        for n in names:
            if n.endswith(MODULE_SUFFIXES):
                rel = os.path.relpath(os.path.join(dirpath, n), moddir)
                files[module_name(rel)] = rel
    builtin_file = moddir / "modules.builtin"
    builtin = {module_name(l) for l in builtin_file.read_text().split()} if builtin_file.exists() else set()

    contents: dict[str, bytes] = {}
    infos: dict[str, dict[str, list[str]]] = {}

    def load(name: str) -> bytes:
        if name not in contents:
            contents[name] = read_module(moddir / files[name])
            infos[name] = modinfo(contents[name], files[name])
        return contents[name]

    # Debian's packages carry no modules.dep (depmod writes it at install time): read
    # each module's own "depends=" unless a modules.dep is shipped.
    dep_file = moddir / "modules.dep"
    shipped = parse_modules_dep(dep_file.read_text()) if dep_file.exists() else None

    def depends_of(name: str) -> list[str] | None:
        if name not in files:
            return None
        if shipped is not None and name in shipped:
            return shipped[name]
        load(name)
        return [d for v in infos[name].get("depends", []) for d in v.split(",") if d]

    order, missing = module_closure(requested, depends_of)
    skipped = []
    for name in missing:
        why = "built in" if name in builtin else "not in this kernel"
        progress(f"module {name}: {why}, skipped")
        skipped.append(f"{name} ({why})")

    base = f"lib/modules/{release}"
    plain = {n: re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", files[n]) for n in order}
    deps = {n: [d.replace("-", "_") for d in depends_of(n) or []] for n in order}
    dep_lines, alias_lines = [], []
    for name in order:
        cpio.file(f"{base}/{plain[name]}", load(name))
        dep_lines.append(f"{plain[name]}: {' '.join(plain[d] for d in transitive_deps(name, deps))}".rstrip())
        alias_lines += [f"alias {a} {name}" for a in infos[name].get("alias", [])]
    # For busybox modprobe/modinfo later (scenarios may rmmod/modprobe hwpoison_inject).
    cpio.file(f"{base}/modules.dep", ("\n".join(dep_lines) + "\n").encode())
    cpio.file(f"{base}/modules.alias", ("\n".join(alias_lines) + "\n").encode())
    if builtin_file.exists():
        cpio.file(f"{base}/modules.builtin", builtin_file.read_bytes())
    # /init insmods these in this order.
    cpio.file("etc/mceorch/modules.load", "".join(f"{plain[n]}\n" for n in order).encode())
    return order, skipped
