"""--kernel: a kernel the developer built, inside the default image's userspace.

The stand-in for a build tree is Debian's 6.12 kernel from the image cache's .debs: its
vmlinuz as arch/x86/boot/bzImage, its config as .config, and its modules as an
INSTALL_MOD_PATH install passed with --modules (as after `make modules_install
INSTALL_MOD_PATH=DIR`)."""
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.image import ensure_image

from .conftest import REPO, orchestrator

RELEASE_612 = "6.12.117+deb12-amd64"


def debian_deb(release: str) -> Path:
    # The default cache's .debs (ensure_image fetches them with apt when missing).
    image = ensure_image("debian-6.12" if release.startswith("6.12") else "debian-6.1", repo_root=REPO)
    debs = image.directory.parents[2] / "debs"
    found = sorted(debs.glob(f"linux-image-{release.replace('+', '[+]')}_*.deb"))
    if not found:
        pytest.fail(f"no linux-image-{release} .deb in {debs}")
    return found[0]


@pytest.fixture(scope="module")
def stand_in_tree(tmp_path_factory):
    """(build tree, INSTALL_MOD_PATH) made from Debian's 6.12 package."""
    base = tmp_path_factory.mktemp("kernel")
    install = base / "install"
    subprocess.run(["dpkg-deb", "-x", str(debian_deb(RELEASE_612)), str(install)], check=True)
    tree = base / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    shutil.copyfile(install / f"boot/vmlinuz-{RELEASE_612}", tree / "arch/x86/boot/bzImage")
    shutil.copyfile(install / f"boot/config-{RELEASE_612}", tree / ".config")
    return tree, install


def test_a_build_tree_with_installed_modules_runs_the_catalog(stand_in_tree, tmp_path):
    tree, install = stand_in_tree
    # unpoison-after-mce has a >=6.12 kernel variant: it passes only if the version came
    # from the kernel itself (the tree has no package name to guess from).
    proc = orchestrator("run", "--kernel", str(tree), "--modules", str(install), "--snapshot",
                        "srao-anon-late-kill", "unpoison-after-mce", results=tmp_path)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(s["outcome"], s["image"], s["kernel_release"]) for s in report["scenarios"]] == \
        [("PASS", "local", RELEASE_612)] * 2
    assert "expectations for kernel >=6.12" in proc.stderr
    # The guest really ran that kernel, with modules from the install folder.
    kernel_log = (tmp_path / "latest" / "srao-anon-late-kill" / "guest-kernel.log").read_text()
    assert f"Linux version {RELEASE_612} (debian-kernel@lists.debian.org)" in kernel_log
    # Saved guests are keyed on the kernel's content: the second scenario restored the first's.
    assert proc.stderr.count("restored from local-") == 2


def test_a_kernel_that_is_no_kernel_is_a_harness_error(tmp_path):
    junk = tmp_path / "bzImage"
    junk.write_bytes(b"not a kernel" * 100)
    proc = orchestrator("run", "--kernel", str(junk), "srao-anon-late-kill", results=tmp_path)
    assert proc.returncode == 2
    assert "neither a bzImage nor an ELF vmlinux" in proc.stderr
    proc = orchestrator("run", "--kernel", str(tmp_path / "missing"), "srao-anon-late-kill", results=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"mce-orchestrator: error: --kernel {tmp_path / 'missing'}: no such file or folder"]


def without(config: str, *options: str) -> str:
    return "".join(line + "\n" for line in config.splitlines()
                   if not any(line.startswith(f"CONFIG_{o}=") for o in options))


def test_a_kernel_without_what_a_scenario_needs_skips_it_before_booting(stand_in_tree, tmp_path):
    tree, install = stand_in_tree
    lean = tmp_path / "lean"
    shutil.copytree(tree, lean)
    (lean / ".config").write_text(without((tree / ".config").read_text(), "TRANSPARENT_HUGEPAGE", "HUGETLBFS"))
    proc = orchestrator("run", "--kernel", str(lean), "--modules", str(install), "thp-head", "hugetlb-2m",
                        results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-3000:]  # a skip never sets the exit code
    run = tmp_path / "results" / "latest"
    report = json.loads((run / "report.json").read_text())
    assert [(s["outcome"], s["skip_reasons"]) for s in report["scenarios"]] == [
        ("SKIP", ["CONFIG_TRANSPARENT_HUGEPAGE is not set: thp-head needs it (probe memory: thp)"]),
        ("SKIP", ["CONFIG_HUGETLBFS is not set: hugetlb-2m needs it (probe memory: hugetlb)"]),
    ]
    assert "boot" not in report["scenarios"][0]["phases_s"]  # nothing was booted
    assert not list(run.glob("*/console.log"))
    assert "[skip] CONFIG_TRANSPARENT_HUGEPAGE is not set: thp-head needs it" in proc.stderr
    assert "2 skipped" in proc.stderr
    suite = ET.parse(run / "junit.xml").getroot()
    assert suite.get("skipped") == "2" and all(case.find("skipped") is not None for case in suite)

    # Without --modules, the tree's own modules are used: this one has none, and virtio-net
    # is a module in this config, so SSH could never come up: skipped, not a boot timeout.
    proc = orchestrator("run", "--kernel", str(tree), "srao-anon-late-kill", results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scenario = json.loads((tmp_path / "results" / "latest" / "report.json").read_text())["scenarios"][0]
    assert scenario["outcome"] == "SKIP"
    assert ("CONFIG_VIRTIO_NET is a module the image does not load (pass --modules?): srao-anon-late-kill "
            "needs it (every scenario)") in scenario["skip_reasons"]
