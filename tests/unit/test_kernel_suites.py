"""Kernel images from suites of their own (images.yaml suite/pin/newer_than): Debian version order,
the split 7.x packages, both unpacked layouts, pins checked, 'nothing newer' said. No network: the
apt is scripted."""
import hashlib
import subprocess
from pathlib import Path

import pytest

from orchestrator.guest.images import suites
from orchestrator.guest.images.apt import compare_versions, control_field, kernel_parts
from orchestrator.guest.images.definitions import load_image_definitions
from orchestrator.guest.images.errors import ImageError
from orchestrator.guest.images.kernels import find_kernel_files

REPO = Path(__file__).resolve().parents[2]

PAIRS = [
    ("7.3~rc7-1~exp1", "7.3.4-1~bpo13+1"), ("7.3.4-1~bpo13+1", "7.3.4-1"), ("7.2.13-1", "7.3.4-1~bpo13+1"),
    ("6.12.118-1~deb12u1", "6.12.99-1"), ("1:1.0", "2.0"), ("7.4~rc1-1~exp1", "7.3.4-1~bpo13+1"),
    ("1.0", "1.0"), ("1.0a", "1.0+"), ("1.0~", "1.0"), ("2.0-1", "2.0-1+b1"), ("6.1.0", "6.1"),
]


@pytest.mark.parametrize("a, b", PAIRS)
def test_debian_version_order_is_dpkgs(a, b):
    want = 0 if subprocess.run(["dpkg", "--compare-versions", a, "eq", b]).returncode == 0 else \
        -1 if subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0 else 1
    assert compare_versions(a, b) == want and compare_versions(b, a) == -want


DEPENDS = ("dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-amd64 "
           "(= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), "
           "linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)")


def test_the_parts_of_a_split_kernel_come_from_its_depends():
    cut = DEPENDS.index(" linux-base")  # a folded field: the continuation line starts with a blank
    record = f"Package: linux-image-7.3.4+deb13-amd64\nDepends: {DEPENDS[:cut]}\n{DEPENDS[cut:]}\nSize: 1900\n"
    assert control_field(record, "Depends") == " ".join(DEPENDS.split())
    assert kernel_parts("linux-image-7.3.4+deb13-amd64", control_field(record, "Depends")) == {
        "linux-base-7.3.4+deb13-amd64": "7.3.4-1~bpo13+1", "linux-binary-7.3.4+deb13-amd64": "7.3.4-1~bpo13+1",
        "linux-modules-7.3.4+deb13-amd64": "7.3.4-1~bpo13+1"}
    # One package (6.x): no parts; another release's parts are not this kernel's.
    assert kernel_parts("linux-image-6.12.118+deb12-amd64", "kmod, linux-base (>= 4.3~)") == {}
    assert kernel_parts("linux-image-7.3.5+deb13-amd64", DEPENDS) == {}


def _tree(root: Path, files: list[str]) -> Path:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f)
    return root


def test_both_layouts_are_found(tmp_path):
    old = _tree(tmp_path / "old", ["boot/vmlinuz-6.1.0-57-amd64", "boot/config-6.1.0-57-amd64",
                                   "lib/modules/6.1.0-57-amd64/kernel/mm/hwpoison-inject.ko"])
    assert find_kernel_files(old, "6.1.0-57-amd64") == (old / "boot/vmlinuz-6.1.0-57-amd64",
                                                        old / "lib/modules/6.1.0-57-amd64",
                                                        old / "boot/config-6.1.0-57-amd64")
    rel = "7.3.4+deb13-amd64"
    split = _tree(tmp_path / "split", [f"usr/lib/modules/{rel}/vmlinuz", f"usr/lib/modules/{rel}/config",
                                       f"usr/lib/modules/{rel}/kernel/mm/hwpoison-inject.ko.xz"])
    assert find_kernel_files(split, rel) == (split / f"usr/lib/modules/{rel}/vmlinuz",
                                             split / f"usr/lib/modules/{rel}", split / f"usr/lib/modules/{rel}/config")
    # Without linux-binary (the vmlinuz) there is no kernel, whatever else is there.
    half = _tree(tmp_path / "half", [f"usr/lib/modules/{rel}/config", f"usr/lib/modules/{rel}/kernel/a.ko"])
    with pytest.raises(ImageError) as exc:
        find_kernel_files(half, rel)
    assert f"nor /usr/lib/modules/{rel}/vmlinuz" in str(exc.value)
    # Another release's files are not this one's.
    with pytest.raises(ImageError):
        find_kernel_files(split, "7.3.5+deb13-amd64")


class ScriptedApt:
    """PrivateApt for suites.resolve: `archive` {package: (version, deb bytes, depends)}."""

    def __init__(self, archive):
        self.archive, self.updates, self.suite = archive, 0, "s"

    def update(self):
        self.updates += 1

    def lists_age(self):
        return None if not self.updates else 1.0

    def state(self):
        return str(self.updates)

    def kernel_names(self):
        return [p for p in self.archive if p.startswith("linux-image-")]

    def candidates(self, names):
        return {n: self.archive[n][0] if n in self.archive else None for n in names}

    def show(self, package, version):
        held = self.archive.get(package)
        if not held or held[0] != version:
            return None
        return f"Package: {package}\nVersion: {version}\nDepends: {held[2]}\nSHA256: {hashlib.sha256(held[1]).hexdigest()}\n"

    def sha256(self, package, version):
        held = self.archive.get(package)
        return hashlib.sha256(held[1]).hexdigest() if held and held[0] == version else None

    def download(self, specs, into):
        for spec in specs:
            package, version = spec.split("=")
            (into / f"{package}_{version}_amd64.deb").write_bytes(self.archive[package][1])

    def update_once(self):
        return False


def _split_archive(rel: str, version: str, tag: bytes = b"") -> dict:
    deps = ", ".join(f"linux-{p}-{rel} (= {version})" for p in ("base", "binary", "modules"))
    return {f"linux-image-{rel}": (version, b"image" + tag, deps),
            **{f"linux-{p}-{rel}": (version, p.encode() + tag, "") for p in ("base", "binary", "modules")}}


def _definitions(tmp_path, text):
    (tmp_path / "images.yaml").write_text(text)
    return load_image_definitions(tmp_path / "images.yaml")


def test_the_newest_is_by_version_and_brings_its_parts(tmp_path):
    archive = {**_split_archive("7.2.12+deb13-amd64", "7.2.12-1~bpo13+1"),
               **_split_archive("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"),
               "linux-image-6.19.14+deb13-amd64": ("6.19.14-1~bpo13+1", b"x", "kmod")}
    apt = ScriptedApt(archive)
    defs = _definitions(tmp_path, 'newest:\n  suite: trixie-backports\n  kernel: "linux-image-[0-9]*-amd64"\n')
    kernel = suites.resolve("newest", defs, tmp_path / "cache", apt_for=lambda d: apt)
    assert (kernel.package, kernel.version) == ("linux-image-7.3.4+deb13-amd64", "7.3.4-1~bpo13+1")
    assert set(kernel.debs()) == {"linux-image-7.3.4+deb13-amd64", "linux-base-7.3.4+deb13-amd64",
                                  "linux-binary-7.3.4+deb13-amd64", "linux-modules-7.3.4+deb13-amd64"}
    assert apt.updates == 1 and "trixie-backports" in kernel.describe()


RC_IMAGES = '''stable:
  suite: trixie-backports
  kernel: "linux-image-[0-9]*-amd64"
rc:
  suite: experimental
  kernel: "linux-image-[0-9]*-amd64"
  newer_than: [stable]
'''


def test_a_release_candidate_is_used_only_while_newer_than_the_newest_stable(tmp_path):
    stable = ScriptedApt(_split_archive("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"))
    defs = _definitions(tmp_path, RC_IMAGES)
    older_rc = ScriptedApt(_split_archive("7.3-amd64", "7.3~rc7-1~exp1"))
    apts = {"trixie-backports": stable, "experimental": older_rc}
    with pytest.raises(suites.NoNewerKernel) as exc:
        suites.resolve("rc", defs, tmp_path / "a", apt_for=lambda d: apts[d["suite"]])
    assert "has linux-image-7.3-amd64 7.3~rc7-1~exp1, not newer than stable's linux-image-7.3.4+deb13-amd64" \
        in str(exc.value)
    apts["experimental"] = ScriptedApt(_split_archive("7.4-amd64", "7.4~rc2-1~exp1"))
    kernel = suites.resolve("rc", defs, tmp_path / "b", apt_for=lambda d: apts[d["suite"]])
    assert (kernel.package, kernel.version) == ("linux-image-7.4-amd64", "7.4~rc2-1~exp1")


def _pinned(tmp_path, archive, version="7.3.4-1~bpo13+1", corrupt=None):
    rel = "7.3.4+deb13-amd64"
    shas = {p: hashlib.sha256(held[1]).hexdigest() for p, held in _split_archive(rel, version).items()}
    if corrupt:
        shas[corrupt] = "deadbeef" * 8
    pin = "\n".join(f"      {p}: {h}" for p, h in shas.items())
    return _definitions(tmp_path, f'k:\n  suite: trixie-backports\n  kernel: "linux-image-7.3.*+deb13-amd64"\n'
                                  f'  pin:\n    version: "{version}"\n    packages:\n{pin}\n')


def test_a_pinned_kernel_is_fetched_and_checked(tmp_path):
    apt = ScriptedApt(_split_archive("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"))
    defs = _pinned(tmp_path, apt.archive)
    kernel = suites.resolve("k", defs, tmp_path / "cache", apt_for=lambda d: apt)
    assert apt.updates == 0  # a pin needs no lists until something must be downloaded
    debs = tmp_path / "debs"
    debs.mkdir()
    got = kernel.fetch(debs, None, lambda _: None)
    assert sorted(got) == sorted(kernel.debs()) and apt.updates == 1
    assert kernel.fetch(debs, None, lambda _: None) == got and apt.updates == 1  # cached: no update


def test_a_deb_unlike_its_pin_is_refused_and_not_kept(tmp_path):
    apt = ScriptedApt(_split_archive("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"))
    defs = _pinned(tmp_path, apt.archive, corrupt="linux-modules-7.3.4+deb13-amd64")
    kernel = suites.resolve("k", defs, tmp_path / "cache", apt_for=lambda d: apt)
    (tmp_path / "debs").mkdir()
    with pytest.raises(ImageError, match="lists linux-modules-7.3.4\\+deb13-amd64 .* the pin in guest-images/images.yaml says deadbeef"):
        kernel.fetch(tmp_path / "debs", None, lambda _: None)
    assert not list((tmp_path / "debs").glob("linux-modules-*"))


def test_a_version_gone_from_the_archive_says_how_to_move_the_pin(tmp_path):
    apt = ScriptedApt(_split_archive("7.3.5+deb13-amd64", "7.3.5-1~bpo13+1"))
    defs = _pinned(tmp_path, {}, version="7.3.4-1~bpo13+1")
    kernel = suites.resolve("k", defs, tmp_path / "cache", apt_for=lambda d: apt)
    (tmp_path / "debs").mkdir()
    with pytest.raises(ImageError) as exc:
        kernel.fetch(tmp_path / "debs", None, lambda _: None)
    message = str(exc.value)
    assert "\n" not in message
    assert "linux-image-7.3.4+deb13-amd64 7.3.4-1~bpo13+1 is no longer in trixie-backports" in message
    assert "its newest match of linux-image-7.3.*+deb13-amd64 is linux-image-7.3.5+deb13-amd64 7.3.5-1~bpo13+1" in message
    assert "move the pin in guest-images/images.yaml" in message and "--show-pin k" in message


@pytest.mark.parametrize("entry, says", [
    ('  kernel: "linux-image-7.3.*-amd64"\n  pin: {version: "1", packages: {linux-image-7.3.4-amd64: abc}}\n',
     "'pin' and 'newer_than' need a 'suite'"),
    ('  suite: trixie-backports\n  kernel: "linux-image-7.3.*-amd64"\n  pin: {version: "1", packages: {linux-image-7.3.4-amd64: abc}}\n',
     "'pin' needs version"),
    ('  suite: trixie-backports\n  kernel: "linux-image-7.3.*-amd64"\n  pin: {version: "1", packages: {linux-image-7.2.4-amd64: '
     + "a" * 64 + '}}\n', "matching 'kernel'"),
    ('  suite: "trixie backports"\n  kernel: "linux-image-7.3.*-amd64"\n', "'suite' must be a Debian suite"),
    ('  suite: experimental\n  kernel: "linux-image-[0-9]*-amd64"\n  newer_than: [nothing]\n', "not another image with a `suite`"),
])
def test_bad_suite_entries_are_one_line(tmp_path, entry, says):
    with pytest.raises(ImageError, match=None) as exc:
        _definitions(tmp_path, "x:\n" + entry)
    assert says in str(exc.value) and "\n" not in str(exc.value)


def test_the_repositorys_named_kernels_are_valid_and_the_newest_stable_is_pinned():
    defs = load_image_definitions(REPO / "guest-images" / "images.yaml")
    pinned = [n for n, d in defs.items() if "pin" in d]
    assert pinned, "no pinned kernel image"
    for name in pinned:
        image, parts, shas = suites.pin_packages(defs[name])
        assert image.startswith("linux-image-") and all(len(h) == 64 for h in shas.values())
    assert any(d.get("newer_than") for d in defs.values()), "no release-candidate image"
