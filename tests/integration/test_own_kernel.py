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

from orchestrator.guest.images import ensure_image


from orchestrator.guest.images.apt import cached_deb



from .conftest import REPO, orchestrator


def debian_kernel(image_name: str) -> tuple[str, Path]:
    """(release, .deb) of the kernel the named image was actually built from: whatever the
    archive serves today (a security update moves it), read from the image's manifest."""
    # The default cache's .debs (ensure_image fetches them with apt when missing).
    image = ensure_image(image_name, repo_root=REPO)
    debs = image.directory.parents[2] / "debs"
    deb = cached_deb(debs, image.kernel_package, image.kernel_package_version)
    if deb is None:
        pytest.fail(f"image {image_name} was built from {image.kernel_package} {image.kernel_package_version}, "
                    f"but its .deb is not in {debs}")
    return image.kernel_release, deb


@pytest.fixture(scope="module")
def stand_in_tree(tmp_path_factory):
    """(build tree, INSTALL_MOD_PATH, release) made from the 6.12 package debian-6.12 is built from."""
    release, deb = debian_kernel("debian-6.12")
    base = tmp_path_factory.mktemp("kernel")
    install = base / "install"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(install)], check=True)
    tree = base / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    shutil.copyfile(install / f"boot/vmlinuz-{release}", tree / "arch/x86/boot/bzImage")
    shutil.copyfile(install / f"boot/config-{release}", tree / ".config")
    return tree, install, release


def test_a_build_tree_with_installed_modules_runs_the_catalog(stand_in_tree, tmp_path, record_property):
    tree, install, release = stand_in_tree
    record_property("kernel_release", release)
    print(f"stand-in build tree: Debian's {release}")
    # repeated-injection has a >=6.12 kernel variant: it passes only if the version came
    # from the kernel itself (the tree has no package name to guess from); unpoison-after-mce
    # expects the refusal in the kernel's own printk format, read from the tree's bzImage.
    proc = orchestrator("run", "--kernel", str(tree), "--modules", str(install), "--snapshot",
                        "repeated-injection", "unpoison-after-mce", results=tmp_path)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(s["outcome"], s["image"], s["kernel_release"]) for s in report["scenarios"]] == \
        [("PASS", "local", release)] * 2
    assert "expectations for kernel >=6.12" in proc.stderr
    evidence = json.loads((tmp_path / "latest" / "unpoison-after-mce" / "evidence.json").read_text())
    assert evidence["printk_formats"] == {
        "disabled after HW memory failure": ["Unpoison: %#lx: disabled after HW memory failure"]}
    # The guest really ran that kernel, with modules from the install folder.
    kernel_log = (tmp_path / "latest" / "repeated-injection" / "guest-kernel.log").read_text()
    assert f"Linux version {release} (debian-kernel@lists.debian.org)" in kernel_log
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
    tree, install, _ = stand_in_tree
    lean = tmp_path / "lean"
    shutil.copytree(tree, lean)
    (lean / ".config").write_text(without((tree / ".config").read_text(), "TRANSPARENT_HUGEPAGE", "HUGETLBFS"))
    proc = orchestrator("run", "--kernel", str(lean), "--modules", str(install), "thp-head", "hugetlb-2m",
                        results=tmp_path / "results")
    # Every scenario skipped: nothing was tested, its own exit code (a run with a pass beside a skip is 0).
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert "nothing was tested: every scenario was skipped (exit 5)" in proc.stderr
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
    assert proc.returncode == 5, proc.stderr[-3000:]
    scenario = json.loads((tmp_path / "results" / "latest" / "report.json").read_text())["scenarios"][0]
    assert scenario["outcome"] == "SKIP"
    assert ("CONFIG_VIRTIO_NET is a module the image does not load (pass --modules?): srao-anon-late-kill "
            "needs it (every scenario)") in scenario["skip_reasons"]


def test_a_kernel_in_the_distribution_layout_is_checked_against_its_config_beside_it(stand_in_tree, tmp_path):
    # Issue 22 item 5: DIR/boot/vmlinuz-REL with DIR/boot/config-REL beside it was not checked at all,
    # so a kernel without THP ran the THP scenarios.
    _, install, release = stand_in_tree
    boot = tmp_path / "dist" / "boot"
    boot.mkdir(parents=True)
    shutil.copyfile(install / f"boot/vmlinuz-{release}", boot / f"vmlinuz-{release}")
    config = boot / f"config-{release}"
    config.write_text(without((install / f"boot/config-{release}").read_text(), "TRANSPARENT_HUGEPAGE"))
    proc = orchestrator("run", "--kernel", str(boot / f"vmlinuz-{release}"),
                        "--modules", str(install / "lib/modules" / release), "thp-head",
                        results=tmp_path / "results")
    assert proc.returncode == 5, proc.stderr[-3000:]
    [scenario] = json.loads((tmp_path / "results" / "latest" / "report.json").read_text())["scenarios"]
    assert (scenario["outcome"], scenario["skip_reasons"]) == (
        "SKIP", ["CONFIG_TRANSPARENT_HUGEPAGE is not set: thp-head needs it (probe memory: thp)"])
    assert f"kernel options checked in {config}" in proc.stderr
