"""Bring your own disk image: a user's cloud-init enabled qcow2 or raw disk.

The disk is never written: every run boots a copy-on-write overlay of it
(orchestrator/guest/images/overlay.py). SSH is set up by cloud-init from a NoCloud seed
made per run, an ISO 9660 volume labelled `cidata` (pycdlib): root gets a
client key generated for this run (with --snapshot: for this disk, kept with
its kernel, since restores of a saved guest need the keys it was set up with), and the guest's SSH host key is generated
here too and handed over in the seed (`ssh_keys`), so the harness pins it
instead of trusting whatever key the guest shows first.

Kernel and initrd are the disk's own, taken from its /boot without libguestfs
or a mount: the disk is converted to a sparse raw file, its partition table
read (MBR or GPT, or none), and `debugfs` (e2fsprogs) dumps the newest
/boot/vmlinuz-* and its initrd.img-* from the first ext2/3/4 file system that
has them. They are cached by the disk's identity (path, size, mtime, inode).
QEMU boots them directly with root= the partition they came from; the disk's
own boot loader is not used (the debian-12-full disk standing in for a
user's image has none).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.guest import images
from orchestrator.guest.images.bzimage import extract_vmlinux
from orchestrator.guest.images.distro import DiskGuestImage

SEED_LABEL = "cidata"
SECTOR = 512
HEAD_BYTES = 1 << 20     # the partition table (MBR, or GPT header and entries) lies within
EXT_MAGIC = 0xEF53
# cloud-init runs before sshd (Python under TCG: slow); the first boot of a cloud image also
# regenerates what a template leaves out. Longer than the built-in disk image's 300 s.
BOOT_TIMEOUT_S = 480
# Root disk first (/dev/vda), a scenario's scratch disk next (/dev/vdb), the seed last.
SCRATCH_DEVICE = "/dev/vdb"
FORMATS = ("qcow2", "raw")


@dataclass(frozen=True, kw_only=True)
class SeededDiskImage(DiskGuestImage):
    """A user's disk image for one run: `disk` is the user's file (the overlay's
    read-only base), `seed` the cloud-init NoCloud volume with this run's keys."""
    disk_format: str
    seed: Path
    source: Path            # the user's disk image as given
    per_run_keys: bool = True  # False with --snapshot: keys and seed kept with the disk's kernel


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Partition:
    number: int   # as the guest kernel numbers it: /dev/vdaN
    offset: int   # bytes
    size: int     # bytes


def partitions(head: bytes) -> list[Partition]:
    """The partitions an MBR or GPT at the start of a disk lists (empty: none). Pure."""
    if len(head) >= 2 * SECTOR and head[SECTOR:SECTOR + 8] == b"EFI PART":
        entries_lba, count, entry_size = struct.unpack_from("<QII", head, SECTOR + 72)
        found = []
        for i in range(min(count, 128)):
            at = entries_lba * SECTOR + i * entry_size
            if at + 56 > len(head):
                break
            type_guid = head[at:at + 16]
            first, last = struct.unpack_from("<QQ", head, at + 32)
            if type_guid != bytes(16) and last >= first:
                found.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR))
        return found
    if len(head) >= SECTOR and head[510:512] == b"\x55\xaa":
        found = []
        for i in range(4):
            kind = head[446 + 16 * i + 4]
            start, sectors = struct.unpack_from("<II", head, 446 + 16 * i + 8)
            if kind == 0xEE:  # protective MBR without a GPT header: nothing we can read
                return []
            if kind and sectors:
                found.append(Partition(i + 1, start * SECTOR, sectors * SECTOR))
        return found
    return []


def is_ext_superblock(block: bytes) -> bool:
    """`block`: 2 KiB from a file system's start; ext2/3/4 keeps its magic at 1024 + 56."""
    return len(block) >= 1082 and struct.unpack_from("<H", block, 1080)[0] == EXT_MAGIC


def _version_key(release: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", release)]


def pick_kernel(debugfs_listing: str) -> str | None:
    """The newest kernel release with both /boot/vmlinuz-R and initrd.img-R as regular
    files, from `debugfs -R 'ls -p /boot'` (/inode/mode/uid/gid/name/size/). Pure."""
    files = set()
    for line in debugfs_listing.splitlines():
        fields = line.strip().split("/")
        if len(fields) >= 6 and fields[2].startswith("100"):
            files.add(fields[5])
    releases = [f.removeprefix("vmlinuz-") for f in files
                if f.startswith("vmlinuz-") and f"initrd.img-{f.removeprefix('vmlinuz-')}" in files]
    return max(releases, key=_version_key) if releases else None


def root_device(partition: Partition | None) -> str:
    return f"/dev/vda{partition.number}" if partition else "/dev/vda"


def kernel_cmdline(root: str) -> str:
    # ds=nocloud: the seed is ours; cloud-init need not probe the other datasources.
    return f"root={root} rw ds=nocloud"


def user_data(client_key_line: str, host_private_key: str, host_key_line: str) -> str:
    """The NoCloud user-data: root logs in with this run's client key only, and the
    host key is the one given here (the image's deleted; with ssh_keys given,
    cloud-init generates none). Pure."""
    config = {
        "disable_root": False,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_authorized_keys": [f"{client_key_line} mceorch-client"],
        "ssh_keys": {"ed25519_private": host_private_key, "ed25519_public": f"{host_key_line} root@mceguest"},
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=True, default_style=None)


def meta_data(instance_id: str) -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: mceguest\n"


def write_seed_iso(path: Path, files: dict[str, bytes]) -> None:
    """An ISO 9660 volume labelled cidata with Rock Ridge and Joliet names (cloud-init's
    NoCloud reads user-data and meta-data from it)."""
    import pycdlib  # only runs with a disk image need it

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for name, data in files.items():
        short = re.sub(r"[^A-Z0-9_]", "", name.upper().replace("-", "_"))[:8] or "FILE"
        iso.add_fp(io.BytesIO(data), len(data), f"/{short}.;1", rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()


# --------------------------------------------------------------------------- the disk's own kernel


def _run(cmd: Sequence[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except FileNotFoundError:
        raise images.ImageError(f"{what}: {cmd[0]} not found (make setup installs it)") from None
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.splitlines() if l.strip()] or ["no output"]
        raise images.ImageError(f"{what}: {lines[-1].strip()}")
    return proc.stdout


def disk_format(path: Path, allow_backing: Sequence[Path] = ()) -> str:
    """qcow2 or raw (what qemu-img sees), else an ImageError naming it, in one line.

    The harness reads the disk as root (qemu-img convert, QEMU): a qcow2 whose backing file
    (or external data file) is some other host file would hand that file to the guest and to
    the kernel extraction. A backing file is refused unless the user named it (--allow-backing),
    and then every layer of the chain must be qcow2 or raw and name only allowed files too."""
    allowed = {Path(p).resolve() for p in allow_backing}
    top = _image_info(path, chain=False)
    check_layer(path, top, allowed)
    if _backing(top):
        # Only now is the chain opened (it reads each layer's header), every file in it allowed.
        layers = _image_info(path, chain=True)
        for layer in layers if isinstance(layers, list) else [layers]:
            check_layer(path, layer, allowed)
    return top["format"]


def _image_info(path: Path, chain: bool):
    argv = ["qemu-img", "info", "--output=json", *(["--backing-chain"] if chain else []), str(path)]
    try:
        return json.loads(_run(argv, f"disk image {path}"))
    except ValueError:
        raise images.ImageError(f"disk image {path}: qemu-img info gave no JSON") from None


def _backing(info: dict) -> str | None:
    return info.get("full-backing-filename") or info.get("backing-filename")


def check_layer(path: Path, info: dict, allowed: set[Path]) -> None:
    """One layer of `path`'s chain, as `qemu-img info --output=json` describes it: its format
    is qcow2 or raw, it has no external data file, and its backing file (if any) is one the
    user allowed. Pure; an ImageError in one line otherwise."""
    name = info.get("filename", str(path))
    where = f"disk image {path}" + ("" if Path(name) == Path(path) else f" (layer {name})")
    fmt = info.get("format")
    if fmt not in FORMATS:
        raise images.ImageError(f"{where}: format {fmt} (qcow2 or raw are supported)")
    data_file = ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
    if data_file:
        raise images.ImageError(f"{where}: refused: it keeps its data in another file ({data_file}), which "
                                f"would be read as root")
    backing = _backing(info)
    if backing and Path(backing).resolve() not in allowed:
        raise images.ImageError(f"{where}: refused: its backing file {backing} would be read as root; "
                                f"to use it, name it: --allow-backing {backing}")


def _debugfs(fs: str, request: str, what: str) -> str:
    return _run(["debugfs", "-R", request, fs], what)


def extract_boot_files(path: Path, fmt: str, out: Path, progress: Callable[[str], None]) -> dict:
    """The disk's newest kernel and initrd into `out`; returns what boots them."""
    work = Path(tempfile.mkdtemp(prefix="mce-disk-read-"))
    try:
        if fmt == "qcow2":
            raw = work / "disk.raw"
            progress(f"disk image {path.name}: reading its /boot (qemu-img convert to a sparse raw copy)")
            _run(["qemu-img", "convert", "-O", "raw", str(path), str(raw)], f"disk image {path}")
        else:
            raw = path
        with raw.open("rb") as f:
            head = f.read(HEAD_BYTES)
            candidates: list[Partition | None] = [*partitions(head)] or [None]
            tried = []
            for part in candidates:
                f.seek(part.offset if part else 0)
                if not is_ext_superblock(f.read(2048)):
                    continue
                fs = f"{raw}?offset={part.offset}" if part else str(raw)
                tried.append(root_device(part))
                listing = subprocess.run(["debugfs", "-R", "ls -p /boot", fs], capture_output=True, text=True,
                                         errors="replace").stdout
                release = pick_kernel(listing)
                if release is None:
                    continue
                for name in (f"vmlinuz-{release}", f"initrd.img-{release}"):
                    _debugfs(fs, f"dump /boot/{name} {out / name}", f"disk image {path}: reading /boot/{name}")
                kernel = f"vmlinuz-{release}"
                try:
                    (out / "vmlinux").write_bytes(extract_vmlinux((out / kernel).read_bytes()))
                    kernel = "vmlinux"  # PVH boot of the uncompressed kernel: faster under TCG
                except images.ImageError:
                    pass
                return {"kernel": kernel, "initrd": f"initrd.img-{release}", "kernel_release": release,
                        "root": root_device(part)}
        if not tried:
            raise images.ImageError(f"disk image {path}: not a disk image with a Linux root file system "
                                    f"(no ext2/3/4 file system on the disk or in its partitions)")
        raise images.ImageError(f"disk image {path}: no /boot/vmlinuz-* with its initrd.img-* on "
                                f"{', '.join(tried)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _disk_identity(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()
                          + Path(__file__).read_bytes()).hexdigest()[:16]


def boot_files(path: Path, fmt: str, cache_root: Path, progress: Callable[[str], None]) -> tuple[Path, dict]:
    """(folder, manifest) of the disk's kernel and initrd, cached by the disk's identity."""
    home = cache_root / "disk-images"
    folder = home / _disk_identity(path)
    try:
        return folder, json.loads((folder / "boot.json").read_text())
    except (OSError, ValueError):
        pass
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=home))
    try:
        manifest = extract_boot_files(path, fmt, tmp, progress)
        (tmp / "boot.json").write_text(json.dumps(manifest) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, manifest


# --------------------------------------------------------------------------- one run's image


def _keygen(path: Path, comment: str) -> str:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], "ssh-keygen")
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _make_seed(folder: Path) -> str:
    """Keys and seed into `folder` (keys/client_key, seed.iso); returns the host key line."""
    keys = folder / "keys"
    keys.mkdir(mode=0o700)
    client_line = _keygen(keys / "client_key", "mceorch-client")
    host_line = _keygen(keys / "host_key", "root@mceguest")
    write_seed_iso(folder / "seed.iso", {
        "meta-data": meta_data(f"mceorch-{os.urandom(8).hex()}").encode(),
        "user-data": user_data(client_line, (keys / "host_key").read_text(), host_line).encode(),
    })
    (keys / "host_key").unlink()  # it lives on in the seed only
    (keys / "host_key.pub").write_text(host_line + "\n")
    return host_line


def _saved_seed(folder: Path) -> tuple[Path, str]:
    """The seed kept beside the disk's kernel for --snapshot: a saved guest was set up
    from it, so its restores need its keys. Made once (temp folder, then renamed)."""
    seed = folder / "seed"
    if not (seed / "seed.iso").is_file() or not (seed / "keys/host_key.pub").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".seed-", dir=folder))
        try:
            _make_seed(tmp)
            shutil.rmtree(seed, ignore_errors=True)
            os.replace(tmp, seed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return seed, (seed / "keys/host_key.pub").read_text().strip()


def prepare_disk_image(path: Path, *, cache_root: Path, workdir: Path, saved_keys: bool = False,
                       progress: Callable[[str], None] = lambda m: None,
                       allow_backing: Sequence[Path] = ()) -> SeededDiskImage:
    """The user's disk image ready to boot: its kernel and initrd (cached), this run's
    keys and seed in `workdir` (private; the caller removes it). `saved_keys` (--snapshot):
    the keys and seed kept with the disk's kernel instead, the same for every run.
    `allow_backing`: backing files the user named (--allow-backing); any other is refused."""
    path = Path(path).resolve()
    if not path.is_file():
        raise images.ImageError(f"disk image {path}: no such file")
    if not os.access(path, os.R_OK):
        raise images.ImageError(f"disk image {path}: not readable")
    fmt = disk_format(path, allow_backing)
    folder, boot = boot_files(path, fmt, Path(cache_root), progress)
    if saved_keys:
        seeds, host_line = _saved_seed(folder)
    else:
        seeds, host_line = workdir, _make_seed(workdir)
    return SeededDiskImage(
        name="disk-image", directory=seeds, kernel=folder / boot["kernel"], initrd=folder / boot["initrd"],
        kernel_release=boot["kernel_release"], kernel_package="disk image", kernel_package_version="",
        client_key=seeds / "keys/client_key", host_key_line=host_line, kernel_source=str(path),
        disk=path, kernel_cmdline=kernel_cmdline(boot["root"]), scratch_device=SCRATCH_DEVICE,
        boot_timeout_s=BOOT_TIMEOUT_S, disk_format=fmt, seed=seeds / "seed.iso", source=path,
        per_run_keys=not saved_keys)


def private_workdir() -> Path:
    """This run's folder for keys and the seed (0700)."""
    return Path(tempfile.mkdtemp(prefix="mce-seed-"))
