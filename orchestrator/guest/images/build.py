"""Assembling one guest image in a private folder: the kernel (from its source), and a
busybox + dropbear initramfs from Debian packages with the kernel's modules and fresh keys."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from orchestrator.guest.images import bzimage, elf

from orchestrator.guest.images.apt import Apt, fetch_debs

from orchestrator.guest.images.cpio import Cpio, compress

from orchestrator.guest.images.definitions import DEFAULT_BOOT, DEFAULT_COMPRESSION

from orchestrator.guest.images.errors import ImageError, run

from orchestrator.guest.images.kernels import KernelFiles, KernelSource

from orchestrator.guest.images.keys import make_keys

from orchestrator.guest.images.modules import DEFAULT_MODULES, add_modules

from orchestrator.guest.images.rootfs import UnpackedRoot



def _boot_files(kernel: KernelFiles, boot: str, out: Path, progress: Callable[[str], None]) -> str:
    """Put the kernel QEMU boots into `out`; return its file name there."""
    data = kernel.image.read_bytes()
    if not bzimage.is_bzimage(data):
        # An ELF vmlinux: QEMU's -kernel starts it only through its PVH entry.
        if not elf.has_pvh_entry(data):
            raise ImageError(f"{kernel.image}: this vmlinux has no PVH entry note (CONFIG_PVH); "
                             "pass the bzImage instead")
        (out / "vmlinux").write_bytes(data)
        return "vmlinux"
    shutil.copyfile(kernel.image, out / "vmlinuz")
    if boot == "pvh":
        try:
            (out / "vmlinux").write_bytes(bzimage.extract_vmlinux(data))
            return "vmlinux"
        except ImageError as e:
            progress(f"{e}; booting the bzImage instead")
    return "vmlinuz"


def build(
    name: str,
    definition: Mapping,
    kernel_source: KernelSource,
    packages: Mapping[str, str],
    digest: str,
    out: Path,
    debs_dir: Path,
    init_script: Path,
    apt: Apt,
    progress: Callable[[str], None],
) -> dict:
    """Build into `out` (a private folder); return the manifest (image.json)."""
    started = time.monotonic()
    debs = fetch_debs(packages, debs_dir, apt, progress)
    debs.update(kernel_source.fetch(debs_dir, apt, progress))

    work = out / "work"
    root = work / "root"
    root.mkdir(parents=True)
    progress(f"unpacking {len(packages)} packages")
    for package in packages:
        run(["dpkg-deb", "-x", str(debs[package]), str(root)], step=f"dpkg-deb -x {debs[package].name}")
    kernel = kernel_source.unpack(work / "kernel", debs)
    release = kernel.release
    kernel_file = _boot_files(kernel, definition.get("boot", DEFAULT_BOOT), out, progress)
    if kernel.config is not None:
        (out / "config").write_text(kernel.config)

    cpio = Cpio()
    tree = UnpackedRoot(root, cpio)

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
    applets = run([str(root / "bin/busybox"), "--list-full"], step="busybox --list-full")
    for applet in applets.split():
        if "/" in applet and applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")

    # dropbear runs /usr/lib/sftp-server for the sftp subsystem (that path is in its
    # binary); Debian's openssh-sftp-server makes it a symlink to openssh/sftp-server.
    tree.add_executable("usr/sbin/dropbear")
    tree.add("usr/lib/sftp-server")
    tree.add_executable("usr/lib/openssh/sftp-server")

    requested = definition.get("modules") or list(DEFAULT_MODULES)
    if kernel.modules is not None:
        progress(f"selecting kernel modules for {release}")
        modules, skipped = add_modules(kernel.modules, release, requested, cpio, progress)
    else:
        # A lone bzImage/vmlinux: whatever the catalog needs must be built in.
        modules, skipped = [], [f"{m} (no modules given)" for m in requested]
        cpio.file("etc/mceorch/modules.load", b"")

    progress("generating SSH keys")
    client_key, client_line, host_line, host_key = make_keys(out / "keys", tree)

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
    initrd.write_bytes(compress(archive, compression))
    shutil.rmtree(work)

    identity = kernel_source.identity()
    return {
        "name": name,
        "digest": digest,
        "kernel": kernel_file,
        "initrd": "initrd.img",
        "client_key": "keys/client_key",
        "kernel_release": release,
        "kernel_package": identity.get("package", "local"),
        "kernel_package_version": identity.get("version", identity.get("kernel_sha256", "")[:16]),
        "kernel_source": kernel_source.describe(),
        "config": "config" if kernel.config is not None else None,
        "config_source": kernel.config_source,
        "host_key_line": host_line,
        "packages": {**packages, **kernel_source.debs()},
        "modules": modules,
        "modules_skipped": skipped,
        "compression": compression,
        "initrd_uncompressed_bytes": len(archive),
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
