"""`git bisect run` with --bisect, for real: a throwaway repository whose commits switch the
kernel under test. PASS gives 0 (good), the guest kernel's FAIL 1 (bad), and a kernel that
cannot boot 125 (skip this commit)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.guest.images import bzimage

from .conftest import REPO
from .test_own_kernel import debian_kernel


def unbootable_vmlinux(bzimage_file: Path, out: Path) -> Path:
    """A real vmlinux whose PVH entry note is gone (as if built without CONFIG_PVH): QEMU's
    -kernel cannot start it."""
    elf = bytearray(bzimage.extract_vmlinux(bzimage_file.read_bytes()))
    note = elf.find(b"\x04\x00\x00\x00" + b"\x04\x00\x00\x00" + b"\x12\x00\x00\x00" + b"Xen\x00")
    if note < 0:
        note = elf.find(b"\x04\x00\x00\x00" + b"\x08\x00\x00\x00" + b"\x12\x00\x00\x00" + b"Xen\x00")
    assert note >= 0, "no PVH note found"
    elf[note + 8] = 0x7F  # another (unknown) Xen note type
    out.write_bytes(bytes(elf))
    return out


def git(repo: Path, *args: str) -> str:
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def test_git_bisect_run_finds_the_regression_and_skips_the_unbootable_kernel(tmp_path, record_property):
    # Whatever 6.1 and 6.12 the archive serves today: the releases the default images were built from.
    installs, releases = {}, {}
    for version in ("6.1", "6.12"):
        releases[version], deb = debian_kernel(f"debian-{version}")
        installs[version] = tmp_path / f"linux-{version}"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(installs[version])], check=True)
        record_property(f"kernel_{version}", releases[version])
    print(f"bisecting between Debian's {releases['6.1']} (good) and {releases['6.12']} (bad)")
    broken = unbootable_vmlinux(installs["6.1"] / f"boot/vmlinuz-{releases['6.1']}", tmp_path / "vmlinux-nopvh")

    # The "regression": unpoison-after-mce expecting 6.1's wording of the unpoison refusal as a
    # plain line (the catalog reads each kernel's own format instead). 6.12 words it
    # differently, so from the commit that moves to 6.12 it FAILs.
    scenario = yaml.safe_load((REPO / "scenarios" / "unpoison-after-mce.yaml").read_text())
    refusal = scenario["expect"]["kernel_log"].index({"printk": "disabled after HW memory failure", "values": ["pfn"]})
    scenario["expect"]["kernel_log"][refusal] = "Unpoison: Disabled after HW memory failure {pfn:#x}"

    repo = tmp_path / "kernel-history"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "unpoison-regression.yaml").write_text(yaml.safe_dump(scenario))
    kernel_of = {
        "c1 good": (installs["6.1"] / f"boot/vmlinuz-{releases['6.1']}", installs["6.1"]),
        "c2 good": (installs["6.1"] / f"boot/vmlinuz-{releases['6.1']}", installs["6.1"]),
        "c3 cannot boot": (broken, installs["6.1"]),
        "c4 regression": (installs["6.12"] / f"boot/vmlinuz-{releases['6.12']}", installs["6.12"]),
        "c5 still bad": (installs["6.12"] / f"boot/vmlinuz-{releases['6.12']}", installs["6.12"]),
    }
    commits = {}
    for subject, (kernel, modules) in kernel_of.items():
        (repo / "kernel").write_text(f"{kernel}\n{modules}\n")
        (repo / "changes").open("a").write(subject + "\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", subject)
        commits[subject] = git(repo, "rev-parse", "HEAD")

    results, codes = tmp_path / "results", tmp_path / "codes"
    step = (f'{sys.executable} -m orchestrator run --bisect --results {results} '
            f'--kernel "$(sed -n 1p kernel)" --modules "$(sed -n 2p kernel)" unpoison-regression.yaml; '
            f'code=$?; echo "$(git log -1 --format=%s) $code" >> {codes}; exit $code')
    git(repo, "bisect", "start", commits["c5 still bad"], commits["c1 good"])
    proc = subprocess.run(["git", "-C", str(repo), "bisect", "run", "sh", "-c", step], capture_output=True,
                          text=True, timeout=1200)
    log = codes.read_text().splitlines()
    git(repo, "bisect", "reset")
    # c3 is the first midpoint: it cannot boot (125, skipped); then c2 (good) and c4 (bad) are
    # tested in some order. c3 untestable, the first bad commit is c3 or c4, which git says.
    assert sorted(log) == ["c2 good 0", "c3 cannot boot 125", "c4 regression 1"], (log, proc.stdout[-2000:])
    assert "There are only 'skip'ped commits left to test" in proc.stdout, proc.stdout[-2000:]
    assert commits["c3 cannot boot"] in proc.stdout and commits["c4 regression"] in proc.stdout
    assert commits["c2 good"] not in proc.stdout.split("could be any of")[-1]


def _kvm_cannot_run_guests() -> bool:
    """/dev/kvm is there but the CPU has no virtualization extensions (nested-less VM):
    QEMU with -accel kvm aborts before any kernel runs ("failed to set MSR")."""
    flags = Path("/proc/cpuinfo").read_text()
    return os.path.exists("/dev/kvm") and " vmx" not in flags and " svm" not in flags


@pytest.mark.parametrize("options, why", [
    ("--image debian-6.13", "no image named 'debian-6.13'; did you mean"),
    pytest.param("--accel kvm", "QEMU fails without the kernel too",
                 marks=pytest.mark.skipif(not _kvm_cannot_run_guests(), reason="needs a /dev/kvm that cannot run guests")),
])
def test_git_bisect_run_stops_on_what_every_commit_would_meet(tmp_path, options, why):
    """A typo in the image name, or a QEMU that fails before the kernel runs, is not the
    kernel's: every commit would meet it, so the bisection stops (exit above 127) at the
    first step instead of skipping every commit."""
    repo = tmp_path / "kernel-history"
    repo.mkdir()
    git(repo, "init", "-q")
    commits = []
    for n in range(1, 6):
        (repo / "changes").open("a").write(f"c{n}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"c{n}")
        commits.append(git(repo, "rev-parse", "HEAD"))
    codes = tmp_path / "codes"
    step = (f'{sys.executable} -m orchestrator run --bisect --results {tmp_path / "results"} {options} '
            f'srao-anon-late-kill; code=$?; echo "$(git log -1 --format=%s) $code" >> {codes}; exit $code')
    git(repo, "bisect", "start", commits[-1], commits[0])
    proc = subprocess.run(["git", "-C", str(repo), "bisect", "run", "sh", "-c", step], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    log = codes.read_text().splitlines()
    git(repo, "bisect", "reset")
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert len(log) == 1 and log[0].endswith(" 128"), (log, proc.stdout[-2000:], proc.stderr[-2000:])
    # git's words for a stopped bisection ("bisect run failed: exit code 128 ... is < 0 or >= 128").
    assert "bisect run failed" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert why in proc.stdout + proc.stderr
