"""Kernel images from Debian suites the host's apt does not use (guest-images/images.yaml entries
with `suite`): fetched by package name with a private apt configuration (apt.PrivateApt: its own
sources list, lists, cache and empty status under guest-images/.cache/apt/), never the host's.

Three kinds of entry:
- pinned (`pin`: version and the SHA-256 of each .deb): the same kernel on every host until the
  pin is moved; a version gone from the archive is one line naming the pin and how to move it;
- the newest (no `pin`): the newest package matching `kernel` in the suite(s), its lists fetched
  again when older than REFRESH_S; the image's manifest and every run's report say which it got;
- the newest only when newer than other images (`newer_than`): a release candidate in
  experimental is tested only while it is newer than the newest stable kernel; otherwise there is
  nothing to test (NoNewerKernel: said as such, not an error).

    python3 -m orchestrator.guest.images --show-pin NAME   what the suite has now: the pin to write
    python3 -m orchestrator.guest.images --which NAME      the kernel NAME means today (or why none: exit 5)
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from orchestrator.guest.images.apt import (PrivateApt, cached_deb, compare_versions, control_field, fetch_debs,
                                           kernel_candidates, kernel_parts)
from orchestrator.guest.images.errors import ImageError
from orchestrator.guest.images.kernels import DebianPackageKernel
from orchestrator.plumbing.digest import file_sha256

IMAGES_FILE = Path("guest-images") / "images.yaml"
# An unpinned image's lists are fetched again when older than this: a whole catalog run (or a
# nightly's workers) resolves to one kernel, and the next day's run sees what the archive has then.
REFRESH_S = 6 * 3600


class NoNewerKernel(ImageError):
    """An image that exists only while its suite has a kernel newer than other images' (a release
    candidate newer than the newest stable): today there is none. Nothing to test; not an error."""


def suites_of(definition: Mapping) -> tuple[str, ...]:
    suite = definition["suite"]
    return (suite,) if isinstance(suite, str) else tuple(suite)


def private_apt(cache_root: Path, definition: Mapping) -> PrivateApt:
    suites = suites_of(definition)
    return PrivateApt(Path(cache_root) / "apt" / "+".join(suites), suites)


def refresh(apt, progress: Callable[[str], None], max_age: float = REFRESH_S) -> None:
    age = apt.lists_age()
    if age is None or age > max_age:
        progress(f"apt-get update ({apt.suite}, a private apt configuration)")
        apt.update()


def newest(pattern: str, apt) -> tuple[str, str] | None:
    """(package, version) of the newest kernel package matching `pattern` in the apt's suites
    (by Debian version order, not by name: 7.3~rc7 is older than 7.3.4)."""
    names = kernel_candidates(pattern, apt.kernel_names())
    versions = {n: v for n, v in apt.candidates(names).items() if v}
    if not versions:
        return None
    best = None
    for name, version in versions.items():
        if best is None or compare_versions(version, best[1]) > 0:
            best = (name, version)
    return best


def pin_packages(definition: Mapping) -> tuple[str, dict[str, str], dict[str, str]]:
    """(image package, {part: version}, {package: sha256}) of a pinned entry."""
    pin = definition["pin"]
    shas = dict(pin["packages"])
    image = next(p for p in shas if p.startswith("linux-image-"))
    return image, {p: pin["version"] for p in shas if p != image}, shas


def moved_pin_error(name: str, definition: Mapping, package: str, now: tuple[str, str] | None) -> ImageError:
    suite = " ".join(suites_of(definition))
    has = f"{now[0]} {now[1]}" if now else "no package matching it"
    return ImageError(f"image {name}: {package} {definition['pin']['version']} is no longer in {suite} "
                      f"(its newest match of {definition['kernel']} is {has}): move the pin in {IMAGES_FILE} "
                      f"(python3 -m orchestrator.guest.images --show-pin {name} prints the new version and "
                      f"SHA-256s)")


class SuiteKernel(DebianPackageKernel):
    """A kernel package from a suite of its own; a pinned one's .debs checked against the pin."""

    def __init__(self, name: str, definition: Mapping, package: str, version: str, parts: Mapping[str, str],
                 apt: PrivateApt, pin: Mapping[str, str] | None = None):
        super().__init__(package, version, parts, apt=apt, suite=" ".join(suites_of(definition)), pin=pin)
        self.name, self.definition = name, definition

    def fetch(self, debs_dir: Path, host_apt, progress: Callable[[str], None]) -> dict[str, Path]:
        wanted = self.debs()
        if self.pin and any(cached_deb(debs_dir, p, v) is None for p, v in wanted.items()):
            progress(f"apt-get update ({self.suite}, a private apt configuration)")
            self.apt.update()
            for package, version in wanted.items():
                listed = self.apt.sha256(package, version)
                if listed is None:
                    raise moved_pin_error(self.name, self.definition, package,
                                          newest(self.definition["kernel"], self.apt))
                if listed != self.pin[package]:
                    raise ImageError(f"image {self.name}: {self.suite} lists {package} {version} with SHA-256 "
                                     f"{listed}, the pin in {IMAGES_FILE} says {self.pin[package]}")
        got = fetch_debs(wanted, debs_dir, self.apt, progress)
        for package, path in got.items():
            if self.pin:
                sha = file_sha256(path)
                if sha != self.pin[package]:
                    path.unlink(missing_ok=True)  # never reused
                    raise ImageError(f"image {self.name}: {path.name} has SHA-256 {sha}, the pin in "
                                     f"{IMAGES_FILE} says {self.pin[package]}")
        return got


def resolve(name: str, definitions: Mapping[str, Mapping], cache_root: Path,
            progress: Callable[[str], None] = lambda _: None, apt_for=None) -> SuiteKernel:
    """The kernel image `name` means today. Raises NoNewerKernel for a `newer_than` entry whose
    suite has nothing newer. `apt_for(definition)`: the apt to ask (tests); else a PrivateApt."""
    definition = definitions[name]
    apt = (apt_for or (lambda d: private_apt(cache_root, d)))(definition)
    if "pin" in definition:
        package, parts, shas = pin_packages(definition)
        return SuiteKernel(name, definition, package, definition["pin"]["version"], parts, apt, pin=shas)
    record_file = Path(cache_root) / "images" / name / "resolved-suite.json"
    refresh(apt, progress)
    key = {"lists": apt.state(), "definition": dict(definition)}
    try:
        record = json.loads(record_file.read_text())
        if record.get("key") == key:
            found, parts = tuple(record["kernel"]), record["parts"]
        else:
            found = None
    except (OSError, ValueError, KeyError, TypeError):
        found = None
    if found is None:
        progress(f"image {name}: looking for the newest {definition['kernel']} in {apt.suite}")
        found = newest(definition["kernel"], apt)
        if found is None:
            raise ImageError(f"image {name}: no package matches {definition['kernel']} in {apt.suite}")
        record = apt.show(*found)
        parts = kernel_parts(found[0], control_field(record or "", "Depends"))
        record_file.parent.mkdir(parents=True, exist_ok=True)
        partial = record_file.with_name(f".resolved-suite-{os.getpid()}.json")
        partial.write_text(json.dumps({"key": key, "kernel": list(found), "parts": parts}) + "\n")
        partial.replace(record_file)
    package, version = found
    for other in definition.get("newer_than", ()):
        theirs = resolve(other, definitions, cache_root, progress, apt_for)
        if compare_versions(version, theirs.version) <= 0:
            raise NoNewerKernel(f"image {name}: {apt.suite} has {package} {version}, not newer than {other}'s "
                                f"{theirs.package} {theirs.version}: no newer kernel to test today")
    return SuiteKernel(name, definition, package, version, parts, apt)


def show_pin(name: str, definitions: Mapping[str, Mapping], cache_root: Path,
             progress: Callable[[str], None] = lambda _: None, apt_for=None) -> str:
    """The `pin:` block for the newest kernel matching the entry's `kernel` in its suite(s) now."""
    definition = definitions[name]
    apt = (apt_for or (lambda d: private_apt(cache_root, d)))(definition)
    apt.update()
    found = newest(definition["kernel"], apt)
    if found is None:
        raise ImageError(f"image {name}: no package matches {definition['kernel']} in {apt.suite}")
    package, version = found
    parts = kernel_parts(package, control_field(apt.show(package, version) or "", "Depends"))
    lines = ["  pin:", f'    version: "{version}"', "    packages:"]
    for p, v in {package: version, **parts}.items():
        lines.append(f"      {p}: {apt.sha256(p, v) or 'absent'}")
    return "\n".join(lines)
