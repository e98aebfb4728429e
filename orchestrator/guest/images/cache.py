"""The entry point: ensure_image() returns a cached build whose inputs digest matches, or
builds one (in a private temporary folder, renamed into place when complete).

Everything that ends up in the guest comes from Debian packages fetched with `apt-get
download` (or from the kernel the user passed), so an image's inputs can be hashed: the
builder's own source, guest-images/init, the images.yaml entry, the resolved package
versions and the kernel's identity.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.guest.images.apt import BASE_PACKAGES, Apt, resolve_cached

from orchestrator.guest.images.build import build

from orchestrator.guest.images.definitions import DEFAULT_IMAGE, load_image_definitions

from orchestrator.guest.images.errors import ImageError

from orchestrator.guest.images.kernels import DebianPackageKernel, KernelSource, LocalKernel

from orchestrator.guest.images import suites


PACKAGE_DIR = Path(__file__).resolve().parent
_NOT_BUILDER = {"distro.py", "disk.py", "overlay.py", "pmem.py"}
# Images built from a kernel the user passed (--kernel) live under this name.
LOCAL_IMAGE = "local"
# What says where an image's kernel comes from: dropped when --kernel replaces it.
_KERNEL_KEYS = ("kernel", "suite", "pin", "newer_than")


@dataclass(frozen=True)
class GuestImage:
    name: str  # e.g. "debian-6.1", or "local" for --kernel
    directory: Path  # cache dir of this build
    kernel: Path  # vmlinux (PVH) or vmlinuz
    initrd: Path
    kernel_release: str  # e.g. "6.1.0-41-amd64" (uname -r in the guest)
    kernel_package: str  # "linux-image-6.1.0-41-amd64", or "local"
    kernel_package_version: str
    client_key: Path  # private key, 0600
    host_key_line: str  # "ssh-ed25519 AAAA..." of the guest's host key, for pinning
    config: Path | None = None  # the kernel's .config, when known
    config_source: str | None = None  # where that .config was read
    modules: tuple[str, ...] = ()  # modules /init loads
    kernel_source: str = ""  # where the kernel came from, one line


def builder_sources() -> list[Path]:
    """The files whose change must rebuild every image: this package's modules (the
    initramfs builder; not the distribution, disk, overlay and pmem modules beside it)."""
    return sorted(p for p in PACKAGE_DIR.glob("*.py") if p.name not in _NOT_BUILDER)


def image_inputs_digest(
    name: str,
    definition: Mapping,
    packages: Mapping[str, str],
    *,
    init_script: Path,
    kernel: Mapping | None = None,
    builder: list[Path] | None = None,
) -> str:
    """sha256 over everything a build depends on: the builder, the guest's /init, the
    images.yaml entry, the resolved package names and versions, and the kernel's identity."""
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    for source in builder if builder is not None else builder_sources():
        part(f"builder {source.name}", source.read_bytes())
    part("init", Path(init_script).read_bytes())
    part("definition", json.dumps({"name": name, **definition}, sort_keys=True).encode())
    part("packages", json.dumps(sorted(packages.items())).encode())
    if kernel is not None:
        part("kernel", json.dumps(kernel, sort_keys=True).encode())
    return h.hexdigest()


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
        config=directory / manifest["config"] if manifest.get("config") else None,
        config_source=manifest.get("config_source"),
        modules=tuple(manifest.get("modules", ())),
        kernel_source=manifest.get("kernel_source", ""),
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
def build_lock(lock_path: Path, progress: Callable[[str], None]) -> Iterator[None]:
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
        ignore.write_text("# build cache of orchestrator/guest/images (holds private keys)\n*\n")
    debs = cache_root / "debs"
    debs.mkdir(exist_ok=True)
    return debs


def ensure_image(
    name: str = DEFAULT_IMAGE,
    *,
    repo_root: Path,
    cache_root: Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
    kernel: Path | None = None,
    modules: Path | None = None,
) -> GuestImage:
    """Return the cached image if its inputs digest matches, else build it (atomically:
    build in a temp dir, rename into place). cache_root default: <repo_root>/guest-images/.cache.

    With `kernel` (a bzImage, a vmlinux or a build tree; `modules` an INSTALL_MOD_PATH),
    the image is that kernel inside image `name`'s userspace, named "local"."""
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
    label = name if kernel is None else LOCAL_IMAGE

    try:
        debs_dir = _prepare_cache(cache)
        apt = Apt(progress)
        kernel_package, packages = resolve_cached(name, definition, apt, cache / "images" / name, progress)
        source: KernelSource
        if kernel is not None:
            source = LocalKernel(kernel, modules)
            definition = {key: value for key, value in definition.items() if key not in _KERNEL_KEYS}
        elif kernel_package is None:  # a kernel from a suite of its own (pinned, newest, newer than)
            source = suites.resolve(name, definitions, cache, progress)
        else:
            source = DebianPackageKernel(kernel_package, packages[kernel_package])
        base = {p: packages[p] for p in BASE_PACKAGES}
        digest = image_inputs_digest(label, definition, base, init_script=init_script, kernel=source.identity())
        # One directory per image name: its lock, its finished build, temporary builds.
        home = cache / "images" / label
        home.mkdir(parents=True, exist_ok=True)
        final = home / digest[:16]

        with build_lock(home / ".lock", progress):
            cached = _load_cached(final, digest)
            if cached is not None:
                progress(f"image {label}: cached ({source.describe()})")
                return cached
            # Leftovers of killed builds (never valid: only complete builds are renamed
            # into place), and an incomplete copy of this one.
            for old in [*home.glob(".build-*"), final]:
                shutil.rmtree(old, ignore_errors=True)
            progress(f"image {label}: building with {source.describe()}")
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
            try:
                # Private to the user: keys/ holds the client key and the initramfs
                # carries the guest's host key.
                os.chmod(tmp, 0o700)
                manifest = build(label, definition, source, base, digest, tmp, debs_dir, init_script, apt, progress)
                (tmp / "image.json").write_text(json.dumps(manifest, indent=2) + "\n")
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _prune(home, keep=final)
            image = _load_cached(final, digest)
            if image is None:
                raise ImageError(f"image {label}: build finished but {final} is incomplete")
            size = image.kernel.stat().st_size + image.initrd.stat().st_size
            progress(f"image {label}: built in {manifest['build_seconds']} s ({size / 2**20:.1f} MiB)")
            return image
    except ImageError as e:
        # Every message names the image and the step, on one line.
        message = " ".join(str(e).split())
        if message.startswith(f"image {label}:"):
            raise
        raise ImageError(f"image {label}: {message}") from None
    except OSError as e:
        raise ImageError(f"image {label}: {e.strerror or e} ({e.filename or cache})") from None
