"""guest-images/build-kernel.sh on a fake linux-source package (a deb whose tarball has a Makefile
that pretends to configure and build): the default package, caching, patches, the seeded build."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "guest-images" / "build-kernel.sh"

FAKE_MAKEFILE = """\
tinyconfig:
\techo CONFIG_64BIT=y > .config
olddefconfig:
\t@true
bzImage:
\tmkdir -p arch/x86/boot include/config
\tcat ksm.c > arch/x86/boot/bzImage
\techo "6.99.1$(LOCALVERSION)" > include/config/kernel.release
\techo built >> build.log
"""
MERGE = '#!/bin/sh\n# merge_config.sh -m BASE FRAGMENT\ncat "$3" >> "$2"\n'

PATCH = """\
--- a/ksm.c
+++ b/ksm.c
@@ -1,2 +1,3 @@
 int ksm;
+int fixed;
 /* end */
"""


def fake_source(cache: Path, package: str, version: str) -> None:
    """CACHE/debs/PACKAGE_VERSION_all.deb holding usr/src/PACKAGE.tar.xz, as Debian's do."""
    root = cache / "build" / package
    src = root / "src" / package
    (src / "scripts" / "kconfig").mkdir(parents=True)
    (src / "Makefile").write_text(FAKE_MAKEFILE)
    (src / "ksm.c").write_text("int ksm;\n/* end */\n")
    merge = src / "scripts" / "kconfig" / "merge_config.sh"
    merge.write_text(MERGE)
    merge.chmod(0o755)
    pkg = root / "pkg"
    (pkg / "usr" / "src").mkdir(parents=True)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@invalid>\nDescription: fake\n")
    subprocess.run(["tar", "-C", str(root / "src"), "-cJf", str(pkg / "usr" / "src" / f"{package}.tar.xz"), package],
                   check=True)
    (cache / "debs").mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(cache / "debs" / f"{package}_{version}_all.deb")],
                   check=True, capture_output=True)
    shutil.rmtree(cache / "build")


def build(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT), str(tmp_path / "fragment"), str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "JOBS": "1"})


@pytest.fixture
def cache(tmp_path):
    if not shutil.which("dpkg-deb") or not shutil.which("patch"):
        pytest.skip("needs dpkg-deb and patch")
    (tmp_path / "fragment").write_text("CONFIG_KSM=y\nCONFIG_MEMORY_FAILURE=y\n")
    cache = tmp_path / "cache"
    fake_source(cache, "linux-source-6.1", "6.1.99-1")
    fake_source(cache, "linux-source-6.12", "6.12.99-1~deb12u1")
    (tmp_path / "fix.patch").write_text(PATCH)
    return cache


def test_the_default_is_linux_source_6_1_built_once_then_cached(tmp_path, cache):
    first = build(tmp_path)
    assert first.returncode == 0, first.stderr
    tree = cache / "kernel-src" / "linux-source-6.1"
    assert (tree / "arch/x86/boot/bzImage").is_file() and "(6.99.1)" in first.stdout
    assert "CONFIG_KSM=y" in (tree / ".config").read_text()
    # The stamp keeps the format of the 6.1-only script: trees built before it stay cached.
    digest = subprocess.run(["sha256sum", str(tmp_path / "fragment")], capture_output=True, text=True).stdout[:16]
    assert (tree / ".mceorch-stamp").read_text() == f"{digest} linux-source-6.1_6.1.99-1_all.deb\n"
    again = build(tmp_path)
    assert again.returncode == 0 and f"kernel: cached in {tree}" in again.stdout
    assert (tree / "build.log").read_text() == "built\n"


def test_a_patched_build_of_another_package_starts_from_its_unpatched_build(tmp_path, cache):
    assert build(tmp_path, "linux-source-6.12=6.12.99-1~deb12u1").returncode == 0
    plain = cache / "kernel-src" / "linux-source-6.12"
    done = build(tmp_path, "linux-source-6.12", str(tmp_path / "fix.patch"))
    assert done.returncode == 0, done.stderr
    tree = cache / "kernel-src" / "linux-source-6.12+fix"
    assert f"starting from the unpatched build {plain}" in done.stdout
    assert "int fixed;" in (tree / "ksm.c").read_text() and "int fixed;" not in (plain / "ksm.c").read_text()
    assert "(6.99.1+fix)" in done.stdout
    assert (tree / "build.log").read_text() == "built\nbuilt\n"  # the copy's build, then its own
    # A changed patch is a changed tree.
    (tmp_path / "fix.patch").write_text(PATCH.replace("int fixed;", "int fixed2;"))
    redone = build(tmp_path, "linux-source-6.12", str(tmp_path / "fix.patch"))
    assert redone.returncode == 0 and "int fixed2;" in (tree / "ksm.c").read_text()


def test_a_patch_that_does_not_apply_fails_and_leaves_nothing_cached(tmp_path, cache):
    (tmp_path / "bad.patch").write_text(PATCH.replace(" int ksm;", " int other;"))
    done = build(tmp_path, "linux-source-6.12", str(tmp_path / "bad.patch"))
    assert done.returncode == 1
    assert "bad.patch does not apply to linux-source-6.12" in done.stderr
    assert not (cache / "kernel-src" / "linux-source-6.12+bad" / ".mceorch-stamp").exists()


@pytest.mark.parametrize("args, says", [
    (("bash",), "not a linux-source package: bash"),
    (("linux-source-6.12", "/nonexistent.patch"), "no patch /nonexistent.patch"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, cache, args, says):
    done = build(tmp_path, *args)
    assert done.returncode == 2 and says in done.stderr
    assert not (cache / "kernel-src").exists()


def test_a_patch_name_that_is_not_a_plain_word_is_refused(tmp_path, cache):
    odd = tmp_path / "a b;c.patch"
    odd.write_text(PATCH)
    done = build(tmp_path, "linux-source-6.12", str(odd))
    assert done.returncode == 2 and "letters, digits" in done.stderr


def test_a_version_that_is_not_downloaded_is_not_taken_from_another_deb(tmp_path, cache):
    # apt-get download is what runs then: on a host without that version it fails; no other deb is used.
    done = subprocess.run(["sh", "-c", 'PATH="$0:$PATH" exec sh "$@"', str(fake_apt(tmp_path)), str(SCRIPT),
                           str(tmp_path / "fragment"), str(cache), "linux-source-6.12=6.12.1-1"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "download linux-source-6.12=6.12.1-1" in (tmp_path / "apt.log").read_text()
    assert not (cache / "kernel-src" / "linux-source-6.12").exists()


def fake_apt(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/apt.log\nexit 100\n')
    apt.chmod(0o755)
    return bin_dir
