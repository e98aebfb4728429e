"""Debian packages through apt: which kernel package an image means, the versions of
everything it is built from (remembered until apt's lists change), the .debs themselves.

Two apts: the host's (Debian 12's own kernels and the guest's userspace), and PrivateApt, an
apt with its own sources list, lists, cache and an empty status, for suites the host does not
use (trixie-backports, unstable, experimental kernels; the pinned QEMUs): the host's apt
configuration and state are read, never written."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from orchestrator.guest.images.errors import ImageError, run

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

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


def resolve_packages(name: str, definition: Mapping, apt: Apt) -> tuple[str | None, dict[str, str]]:
    """(kernel package, {package: version}) for an image, from the host apt's lists. An image
    whose kernel comes from a suite of its own (suites.py) gets only its userspace here: (None, ...)."""
    pattern = definition["kernel"]
    if "suite" in definition:
        versions = apt.candidates(list(BASE_PACKAGES))
        absent = [p for p in BASE_PACKAGES if not versions[p]]
        if absent and apt.update_once():
            versions = apt.candidates(list(BASE_PACKAGES))
            absent = [p for p in BASE_PACKAGES if not versions[p]]
        if absent:
            raise ImageError(f"image {name}: {', '.join(absent)} not in apt's lists (run apt-get update as root)")
        return None, dict(versions)  # type: ignore[arg-type]
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
                   progress: Callable[[str], None]) -> tuple[str | None, dict[str, str]]:
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


# --- Debian version order (dpkg's, from deb-version(7)) ---------------------------------------

def _order(c: str) -> int:
    # '~' sorts before everything, even the end of the part; letters before non-letters.
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """Debian version order (as `dpkg --compare-versions`): -1, 0 or 1. 7.3~rc7-1~exp1 < 7.3.4-1~bpo13+1."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


# --- apt of its own ---------------------------------------------------------------------------

def host_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list.d/debian.sources"),
                                            Path("/etc/apt/sources.list"))) -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources); deb.debian.org if none."""
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r"URIs:\s*(\S+)", line) or re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", line)
            if m and "security" not in m.group(1):
                return m.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


class PrivateApt:
    """apt with its own sources list (suites on the host's mirror), lists and cache: the host's
    apt configuration and state are read, never written. `suite` is one suite or several."""

    def __init__(self, home: Path, suite: str | Sequence[str], mirror: str | None = None):
        home = self.home = home.resolve()  # apt reads a relative Dir:: path from /
        self.suites = (suite,) if isinstance(suite, str) else tuple(suite)
        self.suite = " ".join(self.suites)
        self.sources = home / "sources.list"
        parts, self.lists, cache = home / "sources.list.d", home / "lists", home / "cache"
        for d in (parts, self.lists / "partial", cache / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        keyring = f"[signed-by={DEBIAN_KEYRING}] " if Path(DEBIAN_KEYRING).is_file() else ""
        mirror = mirror or host_mirror()
        self.sources.write_text("".join(f"deb {keyring}{mirror} {s} main\n" for s in self.suites))
        status = home / "status"  # empty: nothing installed on the host is a candidate here
        status.touch()
        self.opts = ["-o", f"Dir::Etc::sourcelist={self.sources}", "-o", f"Dir::Etc::sourceparts={parts}",
                     "-o", f"Dir::State::Lists={self.lists}", "-o", f"Dir::Cache={cache}",
                     "-o", f"Dir::State::status={status}"]
        if os.geteuid() == 0:  # apt's _apt user could not write to our folders
            self.opts += ["-o", "APT::Sandbox::User=root"]
        self.updated = False

    def update(self) -> None:
        run(["apt-get", "-q", *self.opts, "update"], step=f"apt-get update ({self.suite})")
        self.updated = True

    def update_once(self) -> bool:
        """For fetch_debs: one more update when a download failed."""
        if self.updated:
            return False
        self.update()
        return True

    def lists_age(self) -> float | None:
        """Seconds since the lists were fetched; None when they never were."""
        stamps = [p.stat().st_mtime for p in self.lists.glob("*_Packages*") if p.is_file()]
        return time.time() - min(stamps) if stamps else None

    def state(self) -> str:
        """Changes whenever these lists do."""
        return " ".join(f"{p.name}={p.stat().st_mtime_ns}" for p in sorted(self.lists.glob("*_Packages*")))

    def candidate(self, package: str) -> str | None:
        out = run(["apt-cache", *self.opts, "policy", package], step="apt-cache policy")
        # One package asked for: its entry is the one (named PKG:ARCH where foreign arches are on).
        return next(iter(parse_apt_policy(out).values()), None)

    def candidates(self, names: Sequence[str]) -> dict[str, str | None]:
        if not names:
            return {}
        found = parse_apt_policy(run(["apt-cache", *self.opts, "policy", *names], step="apt-cache policy"))
        return {n: found.get(n, found.get(f"{n}:amd64")) for n in names}

    def kernel_names(self) -> list[str]:
        return run(["apt-cache", *self.opts, "pkgnames", "linux-image-"], step="apt-cache pkgnames").split()

    def show(self, package: str, version: str) -> str | None:
        """`apt-cache show PACKAGE=VERSION`'s record, or None when the lists do not hold that version."""
        try:
            out = run(["apt-cache", *self.opts, "show", f"{package}={version}"], step="apt-cache show")
        except ImageError:
            return None
        return out.split("\n\n", 1)[0] if out.strip() else None

    def sha256(self, package: str, version: str) -> str | None:
        record = self.show(package, version)
        m = re.search(r"^SHA256:\s*(\S+)", record or "", re.M)
        return m.group(1) if m else None

    def download(self, specs: Sequence[str], into: Path) -> None:
        run(["apt-get", "-q", *self.opts, "download", *specs], step="apt-get download", cwd=into)


def control_field(record: str, name: str) -> str:
    """One field of a Debian control record (continuation lines joined)."""
    m = re.search(rf"^{re.escape(name)}:(.*(?:\n[ \t].*)*)", record, re.M)
    return " ".join(m.group(1).split()) if m else ""


# Since Debian's 7.x kernels, linux-image-REL is a metapackage: the kernel is in
# linux-binary-REL (usr/lib/modules/REL/vmlinuz), the modules in linux-modules-REL and
# config and System.map in linux-base-REL, each at exactly the image's version.
_KERNEL_PART = re.compile(r"^(linux-(?:binary|modules|base)-(\S+?))\s*\(=\s*([^)\s]+)\s*\)$")


def kernel_parts(image_package: str, depends: str) -> dict[str, str]:
    """{package: version} of the parts an image package's Depends names (linux-binary-REL,
    linux-modules-REL, linux-base-REL at '= VERSION'); {} for a kernel in one package."""
    release = image_package.removeprefix("linux-image-")
    parts = {}
    for alternatives in depends.split(","):
        for item in alternatives.split("|"):
            m = _KERNEL_PART.match(item.strip())
            if m and m.group(2) == release:
                parts[m.group(1)] = m.group(3)
    return parts
