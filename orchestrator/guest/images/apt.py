"""Debian packages through apt: which kernel package an image means, the versions of
everything it is built from (remembered until apt's lists change), the .debs themselves."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from orchestrator.guest.images.errors import ImageError, run

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

# Flavours that cannot be used: -cloud has no CONFIG_X86_MCE, -rt behaves
# differently, the rest are not kernels.
_EXCLUDED_KERNEL = re.compile(r"-cloud-|-rt-|-dbg$|-unsigned$|-signed-template$")


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


class Apt:
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
        run(["apt-get", "-q", "update"], step="apt-get update")
        return True

    def kernel_names(self) -> list[str]:
        return run(["apt-cache", "pkgnames", "linux-image-"], step="apt-cache pkgnames").split()

    def candidates(self, names: Sequence[str]) -> dict[str, str | None]:
        found = parse_apt_policy(run(["apt-cache", "policy", *names], step="apt-cache policy"))
        for key in list(found):  # "libc6:amd64" when foreign architectures are enabled
            base = key.split(":")[0]
            if key not in names and base in names:
                found.setdefault(base, found[key])
        return {n: found.get(n) for n in names}

    def download(self, specs: Sequence[str], into: Path) -> None:
        run(["apt-get", "-q", *self.opts, "download", *specs], step="apt-get download", cwd=into)


def resolve_packages(name: str, definition: Mapping, apt: Apt) -> tuple[str, dict[str, str]]:
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


def resolve_cached(name: str, definition: Mapping, apt: Apt, home: Path,
                   progress: Callable[[str], None]) -> tuple[str, dict[str, str]]:
    """resolve_packages, remembered until apt's lists change: the two apt-cache
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
    kernel, packages = resolve_packages(name, definition, apt)
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


def cached_deb(debs: Path, package: str, version: str) -> Path | None:
    prefix = _deb_filename_prefix(package, version)
    for path in sorted(debs.glob(f"{_glob_escape(prefix)}*.deb")):
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def fetch_debs(packages: Mapping[str, str], debs: Path, apt: Apt, progress) -> dict[str, Path]:
    missing = [p for p, v in packages.items() if cached_deb(debs, p, v) is None]
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
        path = cached_deb(debs, p, v)
        if path is None:
            raise ImageError(f"apt-get download: {p}={v} did not produce a .deb")
        out[p] = path
    return out
