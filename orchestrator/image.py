"""Build the guest image: a stock Debian kernel plus a small busybox + dropbear initramfs.

Everything that ends up in the guest comes from Debian packages fetched with
`apt-get download` and unpacked with `dpkg-deb -x`, so an image depends only on the
host's apt lists (no other download source), and its inputs can be hashed: the
build is skipped when the hash of (this file, guest-images/init, the images.yaml
entry, the resolved package versions) matches a finished build in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_IMAGE = "debian-6.1"

# Lines the guest's /init prints on the serial console (see guest-images/init).
READY_MARKER = "MCEORCH-READY"  # dropbear has been started
ERROR_MARKER = "MCEORCH-ERROR"  # a boot step failed; the rest of the line says which

# Fixed by QEMU's user-mode network; the init script uses the same values.
GUEST_IP = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
GUEST_SSH_PORT = 22

# Userspace of the guest. dropbear's and sftp-server's libraries come from these
# packages (not from the host) so that the guest is the same on every host.
BASE_PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "openssh-sftp-server",
    "libc6",
    "libcrypt1",
    "zlib1g",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
)

# Loaded by /init in this order (each after its dependencies). virtio_pci comes
# first so the NIC exists when virtio_net binds. crc32c_generic is not a hard
# dependency of ext4 (it asks the crypto API for "crc32c" at mount time), so it is
# listed explicitly. Modules missing from a kernel, or built in, are skipped.
DEFAULT_MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "pvpanic_pci",
    "hwpoison_inject",
)

# Flavours that cannot be used: -cloud has no CONFIG_X86_MCE, -rt behaves
# differently, the rest are not kernels.
_EXCLUDED_KERNEL = re.compile(r"-cloud-|-rt-|-dbg$|-unsigned$|-signed-template$")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEFINITION_KEYS = {"kernel", "modules", "compression", "boot", "description"}
_COMPRESSIONS = ("gzip", "zstd", "none")
# Under TCG the initramfs compression made no measurable difference to boot time
# (the kernel unpacks it while other init work runs); gzip needs no host tool.
DEFAULT_COMPRESSION = "gzip"
# "pvh": hand QEMU the uncompressed ELF vmlinux, which it starts at the kernel's PVH
# entry point. That skips the bzImage's self-decompression (xz for 6.1), about 2 s of
# a 4.3 s boot under TCG. "bzimage": the package's vmlinuz as is.
_BOOT_MODES = ("pvh", "bzimage")
DEFAULT_BOOT = "pvh"
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


@dataclass(frozen=True)
class GuestImage:
    name: str  # e.g. "debian-6.1"
    directory: Path  # cache dir of this build
    kernel: Path  # vmlinuz
    initrd: Path
    kernel_release: str  # e.g. "6.1.0-41-amd64" (uname -r in the guest)
    kernel_package: str  # "linux-image-6.1.0-41-amd64"
    kernel_package_version: str
    client_key: Path  # private key, 0600
    host_key_line: str  # "ssh-ed25519 AAAA..." of the guest's host key, for pinning


class ImageError(Exception):
    """A one-line message naming the step that failed."""


# --------------------------------------------------------------------------- definitions


def load_image_definitions(path: Path) -> dict[str, dict]:
    """Read and check guest-images/images.yaml: {name: {"kernel": glob, ...}}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ImageError(f"image definitions {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise ImageError(f"image definitions {path}: invalid YAML: {first}") from None
    if not isinstance(data, dict) or not data:
        raise ImageError(f"image definitions {path}: expected a mapping of image names")
    out: dict[str, dict] = {}
    for name, entry in data.items():
        where = f"image definitions {path}: {name!r}"
        if not isinstance(name, str) or not _IMAGE_NAME.match(name):
            raise ImageError(f"{where}: names may use letters, digits, '.', '_', '-'")
        if not isinstance(entry, dict):
            raise ImageError(f"{where}: expected a mapping with a 'kernel' key")
        unknown = sorted(set(entry) - _DEFINITION_KEYS)
        if unknown:
            raise ImageError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
        if not isinstance(entry.get("kernel"), str) or not entry["kernel"].startswith("linux-image-"):
            raise ImageError(f"{where}: 'kernel' must be a package glob like 'linux-image-6.1.0-*-amd64'")
        modules = entry.get("modules")
        if modules is not None and (
            not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules)
        ):
            raise ImageError(f"{where}: 'modules' must be a list of module names")
        if entry.get("compression", DEFAULT_COMPRESSION) not in _COMPRESSIONS:
            raise ImageError(f"{where}: 'compression' must be one of {', '.join(_COMPRESSIONS)}")
        if entry.get("boot", DEFAULT_BOOT) not in _BOOT_MODES:
            raise ImageError(f"{where}: 'boot' must be one of {', '.join(_BOOT_MODES)}")
        out[name] = dict(entry)
    return out


# --------------------------------------------------------------------------- kernel choice


def _natural_key(text: str) -> tuple:
    # Digit runs compare as numbers, so 6.1.0-56 > 6.1.0-9 and 6.12.117 > 6.12.99.
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|\D+", text))


def kernel_candidates(pattern: str, names: Iterable[str]) -> list[str]:
    """Package names matching `pattern` (fnmatch), unusable flavours removed, newest first."""
    found = {n for n in names if fnmatch.fnmatchcase(n, pattern) and not _EXCLUDED_KERNEL.search(n)}
    return sorted(found, key=_natural_key, reverse=True)


def parse_apt_policy(text: str) -> dict[str, str | None]:
    """`apt-cache policy A B ...` output -> {package: candidate version or None}."""
    out: dict[str, str | None] = {}
    current = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
            out[current] = None
        elif current and line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            out[current] = None if value == "(none)" else value
    return out


# --------------------------------------------------------------------------- modules


def module_name(path: str) -> str:
    """'kernel/mm/hwpoison-inject.ko.xz' -> 'hwpoison_inject' (the kernel treats - and _ alike)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES[::-1]:
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


def _transitive_deps(name: str, deps: Mapping[str, Sequence[str]]) -> list[str]:
    # modules.dep lists every indirect dependency too, the one to load first last.
    seen: list[str] = []

    def walk(n: str) -> None:
        for d in deps[n]:
            if d not in seen:
                walk(d)
                seen.append(d)

    walk(name)
    return seen[::-1]


# --------------------------------------------------------------------------- ELF


def _cstring(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode()


def _elf64(data: bytes, what: str) -> None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError(f"{what}: not a little-endian 64-bit ELF file")


def elf_interp_and_needed(data: bytes, what: str = "ELF file") -> tuple[str | None, list[str]]:
    """PT_INTERP and the DT_NEEDED sonames of an ELF64 executable or library."""
    _elf64(data, what)
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic, interp = [], None, None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:  # PT_INTERP
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return interp, []
    needed, strtab = [], None
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            needed.append(val)
        elif tag == 5:  # DT_STRTAB (a virtual address)
            strtab = val
    if not needed:
        return interp, []
    for vaddr, offset, filesz in loads:
        if strtab is not None and vaddr <= strtab < vaddr + filesz:
            base = strtab - vaddr + offset
            return interp, [_cstring(data, base + n) for n in needed]
    raise ImageError(f"{what}: dynamic string table not in a loaded segment")


def elf_section(data: bytes, name: str, what: str = "ELF file") -> bytes | None:
    """Contents of the named section (e.g. a module's .modinfo), or None."""
    _elf64(data, what)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        sh_name, _, _, _, sh_offset, sh_size, *_ = struct.unpack_from(
            "<IIQQQQIIQQ", data, shoff + i * shentsize
        )
        return sh_name, sh_offset, sh_size

    _, strings_at, _ = header(shstrndx)
    for i in range(shnum):
        sh_name, offset, size = header(i)
        if _cstring(data, strings_at + sh_name) == name:
            return data[offset : offset + size]
    return None


def _elf_extent(data: bytes) -> int:
    # Where the ELF file ends: the bzImage payload appends relocation data after it.
    (phoff, shoff) = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    end = max(phoff + phnum * phentsize, shoff + shnum * shentsize)
    for i in range(phnum):
        _, _, p_offset, _, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        end = max(end, p_offset + p_filesz)
    for i in range(shnum):
        _, sh_type, _, _, sh_offset, sh_size, *_ = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        if sh_type != 8:  # SHT_NOBITS occupies no file space
            end = max(end, sh_offset + sh_size)
    return end


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a vmlinux carries the XEN_ELFNOTE_PHYS32_ENTRY note QEMU needs to boot it (PVH)."""
    _elf64(elf, "vmlinux")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage (xz, zstd or gzip payload), for PVH boot."""
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise ImageError("extracting vmlinux: not a bzImage with boot protocol >= 2.08")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    # xz and zstd payloads are followed by the uncompressed size (4 bytes).
    (size,) = struct.unpack_from("<I", payload, len(payload) - 4)
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor().decompress(payload)
        elif payload.startswith(b"\x28\xb5\x2f\xfd"):
            elf = _run(["zstd", "-dc"], step="extracting vmlinux (zstd)", input=payload[:-4], text=False)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
            size = len(elf)
        else:
            raise ImageError(f"extracting vmlinux: unsupported compression (magic {payload[:4].hex()})")
    except (lzma.LZMAError, zlib.error) as e:
        raise ImageError(f"extracting vmlinux: {e}") from None
    if len(elf) != size or not elf.startswith(b"\x7fELF"):
        raise ImageError("extracting vmlinux: decompressed payload is not the expected ELF file")
    elf = elf[: _elf_extent(elf)]
    if not has_pvh_entry(elf):
        raise ImageError("extracting vmlinux: no PVH entry note (kernel built without CONFIG_PVH)")
    return elf


def modinfo(ko: bytes, what: str = "module") -> dict[str, list[str]]:
    """The key=value strings of a module's .modinfo section."""
    info: dict[str, list[str]] = {}
    section = elf_section(ko, ".modinfo", what) or b""
    for item in section.split(b"\0"):
        if b"=" in item:
            key, value = item.decode(errors="replace").split("=", 1)
            info.setdefault(key, []).append(value)
    return info


def _read_module(path: Path) -> bytes:
    # Debian's 6.12 kernels ship .ko.xz; busybox insmod wants plain .ko.
    name = path.name
    try:
        if name.endswith(".xz"):
            return lzma.decompress(path.read_bytes())
        if name.endswith(".gz"):
            return gzip.decompress(path.read_bytes())
        if name.endswith(".zst"):
            return _run(["zstd", "-dc", str(path)], step=f"decompressing {name}", text=False)
        return path.read_bytes()
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise ImageError(f"decompressing module {name}: {e}") from None


# --------------------------------------------------------------------------- initramfs


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


def _compress(data: bytes, method: str) -> bytes:
    if method == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if method == "zstd":
        # The kernel's zstd decompressor needs a bounded window: do not use --long/--ultra.
        return _run(["zstd", "-q", "-19", "-c", "-"], step="compressing initramfs", input=data, text=False)
    return data


# --------------------------------------------------------------------------- digest


def image_inputs_digest(
    name: str,
    definition: Mapping,
    packages: Mapping[str, str],
    *,
    init_script: Path,
    builder_source: Path = Path(__file__),
) -> str:
    """sha256 over everything a build depends on: this builder, the guest's /init, the
    images.yaml entry and the resolved package names and versions."""
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    part("builder", Path(builder_source).read_bytes())
    part("init", Path(init_script).read_bytes())
    part("definition", json.dumps({"name": name, **definition}, sort_keys=True).encode())
    part("packages", json.dumps(sorted(packages.items())).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- processes and apt


def _one_line(text: str) -> str:
    # apt and friends print warnings first; the last E:/error line is the useful one.
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith(("E:", "error", "Error"))]
    return (errors or lines or ["no output"])[-1]


def _run(cmd: Sequence[str], *, step: str, input: bytes | None = None, text: bool = True, **kw):
    env = dict(os.environ, LC_ALL="C")  # parse English output
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, env=env, **kw)
    except FileNotFoundError:
        raise ImageError(f"{step}: {cmd[0]} not found") from None
    if proc.returncode != 0:
        raise ImageError(f"{step}: {_one_line(proc.stderr.decode(errors='replace'))}")
    return proc.stdout.decode() if text else proc.stdout


class _Apt:
    """apt queries, with at most one `apt-get update` per build when something is not found."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self.updated = False
        # As root apt drops to user _apt to download, which cannot write to our cache
        # dir; it falls back with a warning. Say so up front instead.
        self.opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []

    def update_once(self) -> bool:
        if self.updated or os.geteuid() != 0:
            return False
        self.updated = True
        self.progress("apt-get update (a package was not found)")
        _run(["apt-get", "-q", "update"], step="apt-get update")
        return True

    def kernel_names(self) -> list[str]:
        return _run(["apt-cache", "pkgnames", "linux-image-"], step="apt-cache pkgnames").split()

    def candidates(self, names: Sequence[str]) -> dict[str, str | None]:
        found = parse_apt_policy(_run(["apt-cache", "policy", *names], step="apt-cache policy"))
        for key in list(found):  # "libc6:amd64" when foreign architectures are enabled
            base = key.split(":")[0]
            if key not in names and base in names:
                found.setdefault(base, found[key])
        return {n: found.get(n) for n in names}

    def download(self, specs: Sequence[str], into: Path) -> None:
        _run(["apt-get", "-q", *self.opts, "download", *specs], step="apt-get download", cwd=into)


def _resolve_packages(name: str, definition: Mapping, apt: _Apt) -> tuple[str, dict[str, str]]:
    """(kernel package, {package: version}) for an image, from apt's lists."""
    pattern = definition["kernel"]
    while True:
        kernels = kernel_candidates(pattern, apt.kernel_names())
        versions = apt.candidates([*kernels, *BASE_PACKAGES])
        usable = [k for k in kernels if versions[k]]
        absent = [p for p in BASE_PACKAGES if not versions[p]]
        if usable and not absent:
            break
        if apt.update_once():
            continue
        hint = "run apt-get update" if os.geteuid() == 0 else "run apt-get update as root"
        if not usable:
            raise ImageError(f"image {name}: no package matches {pattern} in apt's lists ({hint})")
        raise ImageError(f"image {name}: {', '.join(absent)} not in apt's lists ({hint})")
    kernel = usable[0]
    packages = {kernel: versions[kernel]}
    packages.update({p: versions[p] for p in BASE_PACKAGES})
    return kernel, packages  # type: ignore[return-value]


APT_STATE_FILES = (Path("/var/lib/apt/lists"), Path("/var/cache/apt/pkgcache.bin"))


def _apt_state() -> str:
    """Changes whenever apt's view of the archive can have changed (apt-get update)."""
    parts = []
    for path in APT_STATE_FILES:
        try:
            parts.append(f"{path}={path.stat().st_mtime_ns}")
        except OSError:
            parts.append(f"{path}=absent")
    return " ".join(parts)


def _resolve_cached(name: str, definition: Mapping, apt: _Apt, home: Path,
                    progress: Callable[[str], None]) -> tuple[str, dict[str, str]]:
    """_resolve_packages, remembered until apt's lists change: the two apt-cache
    calls cost more than half a second, on every run."""
    record_file = home / "resolved.json"
    key = {"apt_state": _apt_state(), "definition": dict(definition), "base": list(BASE_PACKAGES)}
    try:
        record = json.loads(record_file.read_text())
        if record.get("key") == key:
            return record["kernel"], record["packages"]
    except (OSError, ValueError, KeyError):
        pass
    progress(f"image {name}: resolving packages")
    kernel, packages = _resolve_packages(name, definition, apt)
    home.mkdir(parents=True, exist_ok=True)
    partial = record_file.with_name(f".resolved-{os.getpid()}.json")
    # apt-get update may have run while resolving: key on the state after it.
    key["apt_state"] = _apt_state()
    partial.write_text(json.dumps({"key": key, "kernel": kernel, "packages": packages}) + "\n")
    partial.replace(record_file)
    return kernel, packages


def _deb_filename_prefix(package: str, version: str) -> str:
    # apt-get download names files package_version_arch.deb, ':' of the epoch as %3a.
    return f"{package}_{version.replace(':', '%3a')}_"


def _cached_deb(debs: Path, package: str, version: str) -> Path | None:
    prefix = _deb_filename_prefix(package, version)
    for path in sorted(debs.glob(f"{_glob_escape(prefix)}*.deb")):
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _fetch_debs(packages: Mapping[str, str], debs: Path, apt: _Apt, progress) -> dict[str, Path]:
    missing = [p for p, v in packages.items() if _cached_deb(debs, p, v) is None]
    if missing:
        progress(f"downloading {len(missing)} package{'s' if len(missing) > 1 else ''}")
        # Into a private dir first: a killed download never leaves a partial .deb in the cache.
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=debs))
        try:
            specs = [f"{p}={packages[p]}" for p in missing]
            try:
                apt.download(specs, tmp)
            except ImageError:
                if not apt.update_once():
                    raise
                apt.download(specs, tmp)
            for f in tmp.glob("*.deb"):
                os.replace(f, debs / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        progress(f"using {len(packages)} cached packages")
    out = {}
    for p, v in packages.items():
        path = _cached_deb(debs, p, v)
        if path is None:
            raise ImageError(f"apt-get download: {p}={v} did not produce a .deb")
        out[p] = path
    return out


# --------------------------------------------------------------------------- assembling the guest


class _Root:
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
            interp, needed = elf_interp_and_needed((self.root / real).read_bytes(), f"/{real}")
            if interp:
                queue.append(interp)
            queue.extend(self.find_library(so, f"/{real}") for so in needed)

    def run(self, program: str, *args: str, step: str) -> str:
        """Run a dynamically linked program from the unpacked tree with its own libc."""
        loader = self.root / self.resolve("lib64/ld-linux-x86-64.so.2")
        libpath = ":".join(str(self.root / d) for d in self.LIBDIRS[:2])
        return _run([str(loader), "--library-path", libpath, str(self.root / program), *args], step=step)


def _kernel_modules(
    kroot: Path, release: str, requested: Sequence[str], cpio: Cpio, progress
) -> tuple[list[str], list[str]]:
    """Copy the requested modules and their dependencies (uncompressed) into the initramfs;
    return (modules in load order, requested modules skipped)."""
    moddir = kroot / "lib/modules" / release
    files: dict[str, str] = {}  # module name -> path relative to moddir
    for dirpath, _, names in os.walk(moddir / "kernel"):
        for n in names:
            if n.endswith(_MODULE_SUFFIXES):
                rel = os.path.relpath(os.path.join(dirpath, n), moddir)
                files[module_name(rel)] = rel
    builtin_file = moddir / "modules.builtin"
    builtin = {module_name(l) for l in builtin_file.read_text().split()} if builtin_file.exists() else set()

    contents: dict[str, bytes] = {}
    infos: dict[str, dict[str, list[str]]] = {}

    def load(name: str) -> bytes:
        if name not in contents:
            contents[name] = _read_module(moddir / files[name])
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
        dep_lines.append(f"{plain[name]}: {' '.join(plain[d] for d in _transitive_deps(name, deps))}".rstrip())
        alias_lines += [f"alias {a} {name}" for a in infos[name].get("alias", [])]
    # For busybox modprobe/modinfo later (scenarios may rmmod/modprobe hwpoison_inject).
    cpio.file(f"{base}/modules.dep", ("\n".join(dep_lines) + "\n").encode())
    cpio.file(f"{base}/modules.alias", ("\n".join(alias_lines) + "\n").encode())
    if builtin_file.exists():
        cpio.file(f"{base}/modules.builtin", builtin_file.read_bytes())
    # /init insmods these in this order.
    cpio.file("etc/mceorch/modules.load", "".join(f"{plain[n]}\n" for n in order).encode())
    return order, skipped


def _make_keys(keys: Path, tree: _Root) -> tuple[Path, str, str, Path]:
    """(client private key, client public line, host public line, dropbear host key file)."""
    keys.mkdir(mode=0o700)
    os.chmod(keys, 0o700)
    client = keys / "client_key"
    if shutil.which("ssh-keygen"):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mceorch-client", "-f", str(client)],
             step="generating the client key (ssh-keygen)")
        client_line = " ".join(client.with_suffix(".pub").read_text().split()[:2])
    else:
        # No openssh-client on the host: make the key with dropbear and convert it to
        # the OpenSSH format paramiko reads.
        raw = keys / "client_key.dropbear"
        tree.run("usr/bin/dropbearkey", "-t", "ed25519", "-f", str(raw), step="generating the client key")
        convert = "usr/bin/dropbearconvert" if tree.exists("usr/bin/dropbearconvert") else "usr/lib/dropbear/dropbearconvert"
        tree.run(convert, "dropbear", "openssh", str(raw), str(client), step="converting the client key")
        client_line = _public_line(tree.run("usr/bin/dropbearkey", "-y", "-f", str(raw), step="reading the client key"))
        raw.unlink()
        client.with_suffix(".pub").write_text(client_line + " mceorch-client\n")
    os.chmod(client, 0o600)

    host = keys / "dropbear_ed25519_host_key"
    tree.run("usr/bin/dropbearkey", "-t", "ed25519", "-f", str(host), step="generating the host key (dropbearkey)")
    os.chmod(host, 0o600)
    host_line = _public_line(tree.run("usr/bin/dropbearkey", "-y", "-f", str(host), step="reading the host key"))
    (keys / "host_key.pub").write_text(host_line + "\n")
    return client, client_line, host_line, host


def _public_line(output: str) -> str:
    # dropbearkey -y prints "Public key portion is:", "ssh-ed25519 AAAA... user@host", "Fingerprint: ...".
    for line in output.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise ImageError("dropbearkey -y: no ssh-ed25519 line in its output")


def _build(
    name: str,
    definition: Mapping,
    kernel_package: str,
    packages: Mapping[str, str],
    digest: str,
    out: Path,
    debs_dir: Path,
    init_script: Path,
    apt: _Apt,
    progress: Callable[[str], None],
) -> dict:
    started = time.monotonic()
    debs = _fetch_debs(packages, debs_dir, apt, progress)

    work = out / "work"
    root, kroot = work / "root", work / "kernel"
    root.mkdir(parents=True)
    kroot.mkdir()
    progress(f"unpacking {len(debs)} packages")
    for package, deb in debs.items():
        _run(["dpkg-deb", "-x", str(deb), str(kroot if package == kernel_package else root)],
             step=f"dpkg-deb -x {deb.name}")

    release = kernel_package.removeprefix("linux-image-")
    vmlinuz = kroot / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.is_file() or not (kroot / "lib/modules" / release).is_dir():
        raise ImageError(f"{kernel_package}: no /boot/vmlinuz-{release} and /lib/modules/{release}")
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    kernel_file = "vmlinuz"
    if definition.get("boot", DEFAULT_BOOT) == "pvh":
        try:
            (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
            kernel_file = "vmlinux"
        except ImageError as e:
            progress(f"{e}; booting the bzImage instead")

    cpio = Cpio()
    tree = _Root(root, cpio)

    # Skeleton. devtmpfs is mounted over /dev at boot, but the kernel opens
    # /dev/console for init's stdio before that, so the node must be in the archive.
    for d in ("proc", "sys", "dev", "run", "mnt", "var/log", "var/tmp", "usr/bin", "usr/sbin", "sbin"):
        cpio.directory(d)
    cpio.directory("tmp", 0o1777)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.symlink("var/run", "/run")

    # busybox: one static binary, applets as symlinks made now rather than at boot.
    tree.add("bin/busybox", 0o755)
    applets = _run([str(root / "bin/busybox"), "--list-full"], step="busybox --list-full")
    for applet in applets.split():
        if "/" in applet and applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")

    # dropbear runs /usr/lib/sftp-server for the sftp subsystem (that path is in its
    # binary); Debian's openssh-sftp-server makes it a symlink to openssh/sftp-server.
    tree.add_executable("usr/sbin/dropbear")
    tree.add("usr/lib/sftp-server")
    tree.add_executable("usr/lib/openssh/sftp-server")

    requested = definition.get("modules") or list(DEFAULT_MODULES)
    progress(f"selecting kernel modules for {release}")
    modules, skipped = _kernel_modules(kroot, release, requested, cpio, progress)

    progress("generating SSH keys")
    client_key, client_line, host_line, host_key = _make_keys(out / "keys", tree)

    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\ntty:x:5:\n")
    cpio.file("etc/shells", b"/bin/sh\n/bin/ash\n")  # dropbear refuses shells not listed here
    cpio.file("etc/hostname", b"mceguest\n")
    cpio.file("etc/hosts", b"127.0.0.1 localhost\n10.0.2.15 mceguest\n")
    cpio.directory("root", 0o700)
    cpio.directory("root/.ssh", 0o700)  # dropbear ignores keys in group/world-writable dirs
    cpio.file("root/.ssh/authorized_keys", (client_line + " mceorch-client\n").encode(), 0o600)
    cpio.directory("etc/dropbear", 0o700)
    cpio.file("etc/dropbear/dropbear_ed25519_host_key", host_key.read_bytes(), 0o600)
    cpio.file("etc/mceorch/image", f"name={name}\nrelease={release}\ndigest={digest}\n".encode())
    cpio.file("init", init_script.read_bytes(), 0o755)

    archive = cpio.serialize()
    compression = definition.get("compression", DEFAULT_COMPRESSION)
    progress(f"writing initramfs ({len(archive) / 2**20:.1f} MiB, {compression})")
    initrd = out / "initrd.img"
    initrd.touch(mode=0o600)  # it carries the guest's private host key
    initrd.write_bytes(_compress(archive, compression))
    shutil.rmtree(work)

    return {
        "name": name,
        "digest": digest,
        "kernel": kernel_file,
        "initrd": "initrd.img",
        "client_key": "keys/client_key",
        "kernel_release": release,
        "kernel_package": kernel_package,
        "kernel_package_version": packages[kernel_package],
        "host_key_line": host_line,
        "packages": dict(packages),
        "modules": modules,
        "modules_skipped": skipped,
        "compression": compression,
        "initrd_uncompressed_bytes": len(archive),
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- cache


def _image_from_manifest(directory: Path, manifest: Mapping) -> GuestImage:
    return GuestImage(
        name=manifest["name"],
        directory=directory,
        kernel=directory / manifest["kernel"],
        initrd=directory / manifest["initrd"],
        kernel_release=manifest["kernel_release"],
        kernel_package=manifest["kernel_package"],
        kernel_package_version=manifest["kernel_package_version"],
        client_key=directory / manifest["client_key"],
        host_key_line=manifest["host_key_line"],
    )


def _load_cached(directory: Path, digest: str) -> GuestImage | None:
    # image.json is written last, so a directory without it (or with another digest) is no image.
    try:
        manifest = json.loads((directory / "image.json").read_text())
        if manifest.get("digest") != digest:
            return None
        image = _image_from_manifest(directory, manifest)
    except (OSError, ValueError, KeyError):
        return None
    if all(p.is_file() for p in (image.kernel, image.initrd, image.client_key)):
        return image
    return None


@contextlib.contextmanager
def _locked(lock_path: Path, progress: Callable[[str], None]) -> Iterator[None]:
    # Two orchestrators asking for the same image: one builds, the other waits and reuses it.
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build ({lock_path.name})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune(home: Path, keep: Path) -> None:
    # Again, after the build: a killed build's dpkg-deb children may have outlived it.
    for stale in home.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # Keep the previous build too: another process may still be about to boot it.
    builds = sorted(
        (d for d in home.iterdir() if d != keep and (d / "image.json").exists()),
        key=lambda d: (d / "image.json").stat().st_mtime,
        reverse=True,
    )
    for old in builds[1:]:
        shutil.rmtree(old, ignore_errors=True)


def _prepare_cache(cache_root: Path) -> Path:
    cache_root.mkdir(parents=True, exist_ok=True)
    ignore = cache_root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# build cache of orchestrator/image.py (holds private keys)\n*\n")
    debs = cache_root / "debs"
    debs.mkdir(exist_ok=True)
    return debs


def ensure_image(
    name: str = DEFAULT_IMAGE,
    *,
    repo_root: Path,
    cache_root: Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> GuestImage:
    """Return the cached image if its inputs digest matches, else build it (atomically:
    build in a temp dir, rename into place). cache_root default: <repo_root>/guest-images/.cache."""
    images_dir = Path(repo_root).resolve() / "guest-images"
    definitions_file = images_dir / "images.yaml"
    definitions = load_image_definitions(definitions_file)
    if name not in definitions:
        raise ImageError(f"image {name}: not defined in {definitions_file} (known: {', '.join(definitions)})")
    definition = definitions[name]
    init_script = images_dir / "init"
    if not init_script.is_file():
        raise ImageError(f"image {name}: {init_script} is missing")
    cache = Path(cache_root).resolve() if cache_root is not None else images_dir / ".cache"

    try:
        debs_dir = _prepare_cache(cache)
        apt = _Apt(progress)
        kernel_package, packages = _resolve_cached(name, definition, apt, cache / "images" / name, progress)
        digest = image_inputs_digest(name, definition, packages, init_script=init_script)
        # One directory per image name: its lock, its finished build, temporary builds.
        home = cache / "images" / name
        home.mkdir(parents=True, exist_ok=True)
        final = home / digest[:16]

        with _locked(home / ".lock", progress):
            cached = _load_cached(final, digest)
            if cached is not None:
                progress(f"image {name}: cached ({kernel_package} {packages[kernel_package]})")
                return cached
            # Leftovers of killed builds (never valid: only complete builds are renamed
            # into place), and an incomplete copy of this one.
            for old in [*home.glob(".build-*"), final]:
                shutil.rmtree(old, ignore_errors=True)
            progress(f"image {name}: building with {kernel_package} {packages[kernel_package]}")
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
            try:
                # Private to the user: keys/ holds the client key and the initramfs
                # carries the guest's host key.
                os.chmod(tmp, 0o700)
                manifest = _build(name, definition, kernel_package, packages, digest, tmp,
                                  debs_dir, init_script, apt, progress)
                (tmp / "image.json").write_text(json.dumps(manifest, indent=2) + "\n")
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _prune(home, keep=final)
            image = _load_cached(final, digest)
            if image is None:
                raise ImageError(f"image {name}: build finished but {final} is incomplete")
            size = image.kernel.stat().st_size + image.initrd.stat().st_size
            progress(f"image {name}: built in {manifest['build_seconds']} s ({size / 2**20:.1f} MiB)")
            return image
    except ImageError as e:
        # Every message names the image and the step, on one line.
        message = " ".join(str(e).split())
        if message.startswith(f"image {name}:"):
            raise
        raise ImageError(f"image {name}: {message}") from None
    except OSError as e:
        raise ImageError(f"image {name}: {e.strerror or e} ({e.filename or cache})") from None
