"""Build a full distribution guest: a Debian root filesystem on a qcow2 disk.

Where orchestrator/guest/images/ makes a busybox + dropbear initramfs around a stock
kernel, this builds what a distribution runs: mmdebstrap installs Debian
packages (systemd, udev, journald, OpenSSH, a RAS daemon, cloud-init and the
same linux-image-6.1.0-*-amd64 kernel as the debian-6.1 image) from the apt
sources the host already has, a few files are written into the tree (network
by DHCP, the pinned host key, the client's key for root, units masked that
only cost boot time), and `mke2fs -d` turns the tree into an ext4 disk (no
mount, no loop device), converted to qcow2.

The guest boots from that disk with the image's own kernel and initrd handed
to QEMU directly (`root=/dev/vda`): there is no boot loader on the disk.
Images are defined in guest-images/distro-images.yaml, built in
`.cache/distro/<name>/<digest>/` (atomically: a temp dir renamed into place,
image.json written last) and reused while the digest of their inputs (this
file, the definition, the host's apt sources and the candidate versions of
the packages asked for) is unchanged.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.guest import images
from orchestrator.guest.images.apt import kernel_candidates, parse_apt_policy
from orchestrator.guest.images.bzimage import extract_vmlinux
from orchestrator.guest.images.cache import build_lock
from orchestrator.plumbing.mounts import remove_tree

DEFINITIONS_FILE = "distro-images.yaml"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
# The root filesystem is /dev/vda; a scenario's scratch disk comes after it.
ROOT_DEVICE = "/dev/vda"
SCRATCH_DEVICE = "/dev/vdb"
# `cloud-init=disabled`: the image carries cloud-init (so it can stand in for a
# user's cloud image), but booted as a built-in image its SSH is set up already.
ROOT_CMDLINE = f"root={ROOT_DEVICE} rw cloud-init=disabled"
_DEFINITION_KEYS = {"description", "suite", "kernel", "packages", "disk_mib", "boot_timeout_s"}
# A systemd boot under TCG takes far longer than the initramfs image's 2 s; a
# scenario's shorter boot deadline (written for that image) is raised to this.
DEFAULT_BOOT_TIMEOUT_S = 300

# Units that only cost boot time in a throw-away test guest. systemd, journald,
# udev, networkd, sshd and rasdaemon stay.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "logrotate.timer",
    "systemd-networkd-wait-online.service", "getty@tty1.service", "serial-getty@ttyS0.service",
    "ras-mc-ctl.service", "systemd-pstore.service", "getty-static.service",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
)
# Loaded at boot like the initramfs image's /init does: scenarios use hwpoison_inject.
MODULES_LOAD = ("hwpoison_inject",)
# What the initrd needs to mount root (initramfs-tools with MODULES=list:
# a small initrd, since the guest's hardware is known).
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")

NETWORK_FILE = """\
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
"""
SSHD_CONFIG = """\
# mce-orchestrator: keys only, root by key, the pinned host key only.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""
# rasdaemon 0.6.8 (Debian 12) polls its trace instance with the kernel's default
# buffer_percent of 50: since Linux 6.1 that poll waits until half the ring buffer
# is full, so a single machine check is never read (seen here: the mce_record in
# the instance's buffer, "No MCE errors" from ras-mc-ctl; mchehab/rasdaemon#85,
# fixed upstream by setting it to 0, PR #86). Do the same before it starts: it
# reuses an existing instance.
RASDAEMON_DROPIN = """\
[Unit]
Wants=sys-kernel-tracing.mount
After=sys-kernel-tracing.mount

[Service]
ExecStartPre=/bin/sh -c 'd=/sys/kernel/tracing/instances/rasdaemon; mkdir -p $d && echo 0 > $d/buffer_percent'
"""
INITRAMFS_HOOK = """\
#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case $1 in prereqs) prereqs; exit 0;; esac
. /usr/share/initramfs-tools/hook-functions
manual_add_modules %s
"""


@dataclass(frozen=True, kw_only=True)  # after GuestImage's defaulted fields
class DiskGuestImage(images.GuestImage):
    """A guest that boots from a disk: `disk` is the (read-only) base of the
    copy-on-write overlay each run boots; `kernel`/`initrd` are the image's own."""
    disk: Path
    kernel_cmdline: str     # root= and friends, before the harness's own arguments
    scratch_device: str     # where a scenario's scratch disk appears in the guest
    boot_timeout_s: float   # the least boot deadline this image gets


# --------------------------------------------------------------------------- definitions


def load_distro_definitions(path: Path) -> dict[str, dict]:
    """guest-images/distro-images.yaml -> {name: definition}; a missing file is no images."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise images.ImageError(f"image definitions {path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise images.ImageError(f"image definitions {path}: expected a mapping of image names")
    out = {}
    for name, entry in data.items():
        where = f"image definitions {path}: {name!r}"
        if not isinstance(entry, dict):
            raise images.ImageError(f"{where}: expected a mapping")
        unknown = sorted(set(entry) - _DEFINITION_KEYS)
        if unknown:
            raise images.ImageError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
        if not isinstance(entry.get("kernel"), str) or not entry["kernel"].startswith("linux-image-"):
            raise images.ImageError(f"{where}: 'kernel' must be a package glob like 'linux-image-6.1.0-*-amd64'")
        if not isinstance(entry.get("suite"), str) or not entry["suite"].isalnum():
            raise images.ImageError(f"{where}: 'suite' must be a Debian suite name like bookworm")
        packages = entry.get("packages")
        if not isinstance(packages, list) or not all(isinstance(p, str) and p for p in packages):
            raise images.ImageError(f"{where}: 'packages' must be a list of package names")
        if not isinstance(entry.get("disk_mib", 2048), int) or entry.get("disk_mib", 2048) < 512:
            raise images.ImageError(f"{where}: 'disk_mib' must be an integer >= 512")
        boot = entry.get("boot_timeout_s", DEFAULT_BOOT_TIMEOUT_S)
        if not isinstance(boot, (int, float)) or isinstance(boot, bool) or boot <= 0:
            raise images.ImageError(f"{where}: 'boot_timeout_s' must be a positive number of seconds")
        out[name] = dict(entry)
    return out


# --------------------------------------------------------------------------- pure parts


def distro_inputs_digest(name: str, definition: Mapping, versions: Mapping[str, str], sources: str,
                         builder_source: Path = Path(__file__)) -> str:
    """sha256 over what a build depends on: this builder, the definition, the host's
    apt sources and the candidate versions of the kernel and the packages asked for."""
    h = hashlib.sha256()
    for label, data in (("builder", Path(builder_source).read_bytes()),
                        ("definition", json.dumps({"name": name, **definition}, sort_keys=True).encode()),
                        ("versions", json.dumps(sorted(versions.items())).encode()),
                        ("sources", sources.encode())):
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def mmdebstrap_argv(suite: str, packages: Sequence[str], target: Path, setup_dir: Path) -> list[str]:
    """The mmdebstrap command line; the mirror list (the host's sources) comes on stdin."""
    return [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
        # The build folder is private (0700): apt's _apt user could not write into it.
        "--aptopt=APT::Sandbox::User \"root\"",
        f"--include={','.join(packages)}",
        # Documentation and translations are of no use in a test guest.
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
        # Before any package is installed: the kernel's postinst builds the initrd with these.
        # mmdebstrap runs a hook through sh with $1 the root: the build folder's path is quoted
        # (a checkout path with a space, or one holding $(...), is a path and nothing more).
        f"--setup-hook=cp -a {shlex.quote(f'{setup_dir}/.')} \"$1\"/",
        suite, str(target), "-",
    ]


def guest_files(client_line: str, host_key: bytes, host_key_pub: str) -> dict[str, tuple[bytes, int]]:
    """Files written into the root tree after mmdebstrap: path -> (content, mode)."""
    return {
        "etc/hostname": (b"mceguest\n", 0o644),
        "etc/hosts": (b"127.0.0.1 localhost\n127.0.1.1 mceguest\n", 0o644),
        "etc/fstab": (f"{ROOT_DEVICE} / ext4 rw,errors=remount-ro 0 1\n".encode(), 0o644),
        "etc/systemd/network/10-mceorch-dhcp.network": (NETWORK_FILE.encode(), 0o644),
        "etc/ssh/sshd_config.d/mceorch.conf": (SSHD_CONFIG.encode(), 0o644),
        "etc/ssh/ssh_host_ed25519_key": (host_key, 0o600),
        "etc/ssh/ssh_host_ed25519_key.pub": ((host_key_pub + " root@mceguest\n").encode(), 0o644),
        "root/.ssh/authorized_keys": ((client_line + " mceorch-client\n").encode(), 0o600),
        "etc/modules-load.d/mceorch.conf": ("".join(f"{m}\n" for m in MODULES_LOAD).encode(), 0o644),
        "etc/systemd/system/rasdaemon.service.d/mceorch-buffer-percent.conf": (RASDAEMON_DROPIN.encode(), 0o644),
    }


def unit_links() -> dict[str, str]:
    """Symlinks `systemctl enable/mask` would make: path -> target."""
    links = {f"etc/systemd/system/{unit}": "/dev/null" for unit in MASKED_UNITS}
    links["etc/systemd/system/multi-user.target.wants/systemd-networkd.service"] = \
        "/lib/systemd/system/systemd-networkd.service"
    links["etc/systemd/system/sockets.target.wants/systemd-networkd.socket"] = \
        "/lib/systemd/system/systemd-networkd.socket"
    return links


# --------------------------------------------------------------------------- processes


def _run(cmd: Sequence[str], *, step: str, input: bytes | None = None) -> str:
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, env=dict(os.environ, LC_ALL="C"))
    except FileNotFoundError:
        raise images.ImageError(f"{step}: {cmd[0]} not found (make setup installs it)") from None
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()] or ["no output"]
        errors = [l for l in lines if l.startswith(("E:", "error", "Error"))]
        raise images.ImageError(f"{step}: {(errors or lines)[-1].strip()}")
    return proc.stdout.decode(errors="replace")


def _run_streaming(cmd: Sequence[str], *, step: str, stdin: Path, log: Path,
                   progress: Callable[[str], None]) -> None:
    """Run a long step, its 'I:' lines shown as progress and everything kept in `log`."""
    last = []
    try:
        with stdin.open("rb") as source, log.open("w") as out:
            proc = subprocess.Popen(cmd, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=dict(os.environ, LC_ALL="C"))
            assert proc.stdout
            for line in proc.stdout:
                out.write(line)
                line = line.strip()
                if line:
                    last = (last + [line])[-5:]
                if line.startswith("I: "):
                    progress(f"{step}: {line[3:]}")
            code = proc.wait()
    except FileNotFoundError:
        raise images.ImageError(f"{step}: {cmd[0]} not found (make setup installs it)") from None
    if code != 0:
        errors = [l for l in last if l.startswith("E:")]
        raise images.ImageError(f"{step} failed: {(errors or last or ['no output'])[-1]} (log: {log})")


def _host_sources() -> tuple[Path, str]:
    for path in APT_SOURCES:
        if path.is_file() and path.read_text().strip():
            return path, path.read_text()
    raise images.ImageError(f"no apt sources on this host ({' or '.join(map(str, APT_SOURCES))})")


def _resolve(name: str, definition: Mapping) -> tuple[str, dict[str, str]]:
    """(kernel package, {package: candidate version}) from apt's lists."""
    names = _run(["apt-cache", "pkgnames", "linux-image-"], step="apt-cache pkgnames").split()
    kernels = kernel_candidates(definition["kernel"], names)
    wanted = [*kernels[:1], *definition["packages"]]
    versions = parse_apt_policy(_run(["apt-cache", "policy", *wanted], step="apt-cache policy"))
    if not kernels or not versions.get(kernels[0]):
        raise images.ImageError(f"image {name}: no package matches {definition['kernel']} in apt's lists "
                                "(run apt-get update as root)")
    absent = [p for p in definition["packages"] if not versions.get(p)]
    if absent:
        raise images.ImageError(f"image {name}: {', '.join(absent)} not in apt's lists (run apt-get update as root)")
    return kernels[0], {p: versions[p] for p in wanted}  # type: ignore[misc]


# --------------------------------------------------------------------------- build


def _write_tree_files(root: Path, files: Mapping[str, tuple[bytes, int]], links: Mapping[str, str]) -> None:
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.touch(mode=mode)
        os.chmod(path, mode)
        path.write_bytes(data)
    os.chmod(root / "root/.ssh", 0o700)
    for rel, target in links.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)


def _make_keys(keys: Path) -> tuple[Path, str, Path, str]:
    """(client private key, client public line, host private key, host public line)."""
    keys.mkdir(mode=0o700)
    client, host = keys / "client_key", keys / "host_key"
    for path, comment in ((client, "mceorch-client"), (host, "root@mceguest")):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
             step="generating SSH keys (ssh-keygen)")
        os.chmod(path, 0o600)
    line = lambda p: " ".join(p.with_suffix(".pub").read_text().split()[:2])  # noqa: E731
    (keys / "host_key.pub").write_text(line(host) + "\n")
    return client, line(client), host, line(host)


def _build(name: str, definition: Mapping, kernel_package: str, versions: Mapping[str, str], sources: Path,
           digest: str, out: Path, progress: Callable[[str], None]) -> dict:
    started = time.monotonic()
    release = kernel_package.removeprefix("linux-image-")
    setup = out / "setup"  # files in place before the first package is installed
    (setup / "etc/initramfs-tools/conf.d").mkdir(parents=True)
    (setup / "etc/initramfs-tools/hooks").mkdir(parents=True)
    (setup / "etc/initramfs-tools/conf.d/mceorch.conf").write_text("MODULES=list\n")
    hook = setup / "etc/initramfs-tools/hooks/mceorch"
    hook.write_text(INITRAMFS_HOOK % " ".join(INITRD_MODULES))
    hook.chmod(0o755)

    root = out / "root"
    packages = [kernel_package, *definition["packages"]]
    progress(f"mmdebstrap {definition['suite']}: {len(packages)} packages and their dependencies "
             "(takes minutes)")
    _run_streaming(mmdebstrap_argv(definition["suite"], packages, root, setup), step="mmdebstrap",
                   stdin=sources, log=out / "mmdebstrap.log", progress=progress)

    progress("configuring the guest (network, sshd, keys, masked units)")
    client_key, client_line, host_key, host_line = _make_keys(out / "keys")
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    _write_tree_files(root, guest_files(client_line, host_key.read_bytes(), host_line), unit_links())
    (out / "keys/host_key").unlink()  # it lives on in the disk only

    vmlinuz, initrd = root / f"boot/vmlinuz-{release}", root / f"boot/initrd.img-{release}"
    if not vmlinuz.is_file() or not initrd.is_file():
        raise images.ImageError(f"{kernel_package}: no /boot/vmlinuz-{release} and initrd.img in the tree")
    kernel_file = "vmlinux"
    try:
        # PVH boot of the uncompressed kernel: ~2 s faster under TCG (see image.py).
        (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
    except images.ImageError as e:
        progress(f"{e}; booting the bzImage instead")
        kernel_file = "vmlinuz"
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    (out / "initrd.img").touch(mode=0o600)
    shutil.copyfile(initrd, out / "initrd.img")

    disk_mib = definition.get("disk_mib", 2048)
    raw = out / "disk.raw"
    progress(f"mke2fs -d: an ext4 file system of {disk_mib} MiB from the tree")
    with raw.open("wb") as f:
        f.truncate(disk_mib << 20)
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "mceorch-root", "-d", str(root), "-F", str(raw)],
         step="mke2fs -d")
    shutil.rmtree(root)
    disk = out / "disk.qcow2"
    progress("qemu-img convert to qcow2")
    disk.touch(mode=0o600)  # holds the guest's private host key
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], step="qemu-img convert")
    os.chmod(disk, 0o600)
    raw.unlink()
    shutil.rmtree(setup)
    return {
        "name": name, "kind": "distro", "digest": digest,
        "kernel": kernel_file, "initrd": "initrd.img", "disk": "disk.qcow2",
        "client_key": "keys/client_key", "host_key_line": host_line,
        "kernel_release": release, "kernel_package": kernel_package,
        "kernel_package_version": versions[kernel_package],
        "kernel_cmdline": ROOT_CMDLINE, "scratch_device": SCRATCH_DEVICE,
        "boot_timeout_s": definition.get("boot_timeout_s", DEFAULT_BOOT_TIMEOUT_S),
        "packages": dict(versions), "disk_bytes": disk.stat().st_size,
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- cache


def image_from_manifest(directory: Path, manifest: Mapping) -> DiskGuestImage:
    return DiskGuestImage(
        name=manifest["name"], directory=directory,
        kernel=directory / manifest["kernel"], initrd=directory / manifest["initrd"],
        kernel_release=manifest["kernel_release"], kernel_package=manifest["kernel_package"],
        kernel_package_version=manifest["kernel_package_version"],
        client_key=directory / manifest["client_key"], host_key_line=manifest["host_key_line"],
        disk=directory / manifest["disk"], kernel_cmdline=manifest["kernel_cmdline"],
        scratch_device=manifest["scratch_device"], boot_timeout_s=manifest["boot_timeout_s"])


def _load_cached(directory: Path, digest: str) -> DiskGuestImage | None:
    try:
        manifest = json.loads((directory / "image.json").read_text())
        if manifest.get("digest") != digest:
            return None
        image = image_from_manifest(directory, manifest)
    except (OSError, ValueError, KeyError):
        return None
    if all(p.is_file() for p in (image.kernel, image.initrd, image.client_key, image.disk)):
        return image
    return None



def ensure_distro_image(name: str, definition: Mapping, *, cache_root: Path,
                        progress: Callable[[str], None] = lambda msg: None) -> DiskGuestImage:
    """The cached build if its inputs digest matches, else a new build (temp dir, then rename)."""
    sources_file, sources = _host_sources()
    kernel_package, versions = _resolve(name, definition)
    digest = distro_inputs_digest(name, definition, versions, sources)
    home = Path(cache_root) / "distro" / name
    home.mkdir(parents=True, exist_ok=True)
    final = home / digest[:16]
    with build_lock(home / ".lock", progress):
        cached = _load_cached(final, digest)
        if cached is not None:
            progress(f"image {name}: cached ({kernel_package} {versions[kernel_package]})")
            return cached
        for old in [*home.glob(".build-*"), final]:
            left = remove_tree(old)  # a killed build's mounts are detached, never walked into
            if left:
                progress(f"image {name}: detached {len(left)} mount(s) an interrupted build left in {old}")
        progress(f"image {name}: building a Debian {definition['suite']} root file system "
                 f"with {kernel_package} {versions[kernel_package]}")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
        try:
            os.chmod(tmp, 0o700)
            manifest = _build(name, definition, kernel_package, versions, sources_file, digest, tmp, progress)
            (tmp / "image.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(tmp, final)
        finally:
            remove_tree(tmp)
        for old in home.iterdir():  # older builds: one image per name is kept
            if old.is_dir() and old != final:
                shutil.rmtree(old, ignore_errors=True)
        image = _load_cached(final, digest)
        if image is None:
            raise images.ImageError(f"image {name}: build finished but {final} is incomplete")
        progress(f"image {name}: built in {manifest['build_seconds']} s "
                 f"(disk {manifest['disk_bytes'] / 2**20:.0f} MiB qcow2)")
        return image


def image_names(repo_root: Path) -> list[str]:
    """Every name --image and guest.image accept: the initramfs images and the distribution images."""
    images_dir = Path(repo_root).resolve() / "guest-images"
    return [*images.load_image_definitions(images_dir / "images.yaml"),
            *load_distro_definitions(images_dir / DEFINITIONS_FILE)]


def ensure_guest_image(name: str, *, repo_root: Path, cache_root: Path | None = None,
                       progress: Callable[[str], None] = lambda msg: None,
                       kernel: Path | None = None, modules: Path | None = None) -> images.GuestImage:
    """Any image by name: a distribution image from distro-images.yaml, else the
    initramfs images of orchestrator.guest.images (where --kernel/--modules apply)."""
    images_dir = Path(repo_root).resolve() / "guest-images"
    cache = Path(cache_root).resolve() if cache_root is not None else images_dir / ".cache"
    definitions = load_distro_definitions(images_dir / DEFINITIONS_FILE)
    if name not in definitions:
        return images.ensure_image(name, repo_root=repo_root, cache_root=cache, progress=progress,
                                   kernel=kernel, modules=modules)
    if kernel is not None:
        raise images.ImageError(f"image {name}: --kernel applies to the initramfs images, not to a disk image "
                                f"(its kernel is the one installed in it)")
    try:
        return ensure_distro_image(name, definitions[name], cache_root=cache, progress=progress)
    except images.ImageError as e:
        message = " ".join(str(e).split())
        raise images.ImageError(message if message.startswith(f"image {name}:") else f"image {name}: {message}") \
            from None
    except OSError as e:
        raise images.ImageError(f"image {name}: {e.strerror or e} ({e.filename or cache})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.guest.images.distro",
                                     description="build (or reuse) a guest image, shown as it goes")
    parser.add_argument("name", nargs="?", default=images.DEFAULT_IMAGE)
    args = parser.parse_args(argv)
    repo_root = Path(__file__).resolve().parents[3]
    started = time.monotonic()
    try:
        image = ensure_guest_image(args.name, repo_root=repo_root,
                                   progress=lambda m: print(f"[{time.monotonic() - started:6.1f} s] {m}", flush=True))
    except images.ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{image.name}: {image.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

