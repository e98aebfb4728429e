"""What the documented make commands run (make -n: printed, not run)."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def dry_run(*args: str) -> str:
    # The stamp is up to date in a set-up checkout; make -n prints the recipe lines either way.
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[-1]


@pytest.mark.parametrize("args, want", [
    (("image",), "-m orchestrator.guest.images.distro debian-6.1"),
    (("image", "KERNEL=debian-12-full"), "-m orchestrator.guest.images.distro debian-12-full"),
    (("image", "KERNEL=debian-6.12"), "-m orchestrator.guest.images.distro debian-6.12"),
    (("image", "KERNEL_PATH=/src/linux"), "-m orchestrator.guest.images debian-6.1 --kernel /src/linux"),
    (("image", "KERNEL_PATH=/src/linux", "MODULES=/m"), "-m orchestrator.guest.images debian-6.1 --kernel /src/linux --modules /m"),
])
def test_make_image_builds_the_named_image_and_a_kernel_only_when_given(args, want):
    assert dry_run(*args).strip().endswith(want)


@pytest.mark.parametrize("code, says", [(1, "exited with code 1"), (2, "exited with code 2"), (0, None)])
def test_make_scenario_names_the_tools_exit_code_which_make_turns_into_2(tmp_path, code, says):
    """make exits 2 for any failed recipe: the tool's own code (1 FAIL, 2 ERROR) is printed,
    with what to run for it; a pass stays 0."""
    tool = tmp_path / "mce-orchestrator"
    tool.write_text(f"#!/bin/sh\necho run \"$@\"\nexit {code}\n")
    tool.chmod(0o755)
    stamp = tmp_path / "stamp"  # newer than pyproject.toml: the set-up is not run again
    stamp.touch()
    made = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "scenario", "NAME=srao-anon-late-kill",
                           f"ORCH={tool}", f"STAMP={stamp}", "HOST_PACKAGES="], capture_output=True, text=True)
    assert made.returncode == (2 if code else 0), made.stderr
    assert "run srao-anon-late-kill" in made.stdout
    if says:
        assert f"make scenario: mce-orchestrator {says}" in made.stderr
        assert f"run {tool} run directly" in made.stderr
    else:
        assert "exited with code" not in made.stderr


def test_the_docs_say_what_ci_runs_for_the_exit_codes():
    for page in ("README.md", "docs/running.md"):
        text = (REPO / page).read_text()
        assert "through `make scenario` (or `make nightly`)\nany failure is make's own exit code 2" in text, page


def matrix_script(*args: str) -> str:
    """The shell `make matrix` would run (make -n), its set-up left out."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "matrix", "HOST_PACKAGES=",
                          *args], capture_output=True, text=True, check=True).stdout
    return out[out.index("status=0; runs="):]


FAKE_ORCH = """#!/bin/sh
# A catalog run: one line in calls.log, a new results folder as results/latest (none for REFUSE).
echo "$*" >> calls.log
case "$*" in *"$REFUSE"*) [ -n "$REFUSE" ] && exit 2;; esac
n=$(ls -d results/run-* 2>/dev/null | wc -l)
mkdir -p results/run-$n && ln -sfn run-$n results/latest
exit ${CODE:-0}
"""


def fake_tools(tmp_path):
    orch, py = tmp_path / "orch", tmp_path / "py"
    orch.write_text(FAKE_ORCH)
    py.write_text('#!/bin/sh\necho "$*" > table-args\necho "| the table |"\n')
    for tool in (orch, py):
        tool.chmod(0o755)
    (tmp_path / "results").mkdir()
    return orch, py


@pytest.mark.parametrize("env, code", [({}, 0), ({"CODE": "1"}, 1)])
def test_make_matrix_runs_the_catalog_on_every_kernel_and_qemu_restored_and_writes_the_table(tmp_path, env, code):
    orch, py = fake_tools(tmp_path)
    script = matrix_script(f"ORCH={orch}", f"PY={py}")
    done = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == code, done.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    kernels = ["debian-6.1", "debian-6.12", "debian-7.3", "debian-rc"]
    assert calls == [f"run --snapshot --image {k} scenarios/*.yaml" for k in kernels] + [
        f"run --snapshot --image {k} --qemu debian-backports scenarios/*.yaml" for k in kernels]
    runs = " ".join(str(tmp_path / "results" / f"run-{n}") for n in range(8))
    assert (tmp_path / "table-args").read_text().split() == ["-m", "orchestrator.report.table", *runs.split(),
                                                            "--update", "docs/verdicts.md"]
    assert "| the table |" in done.stdout and (tmp_path / "results" / "verdict-table.md").exists()


def test_make_matrix_takes_qemus_and_kernels_and_counts_no_missing_pair_twice(tmp_path):
    """A run that refuses before writing results (exit 2, no new results/latest) is a missing pair:
    said, exit 2, and the previous run is not handed to the table a second time."""
    orch, py = fake_tools(tmp_path)
    script = matrix_script(f"ORCH={orch}", f"PY={py}", "QEMUS=system /opt/qemu/build", "KERNELS=debian-6.1")
    done = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "REFUSE": "--qemu /opt/qemu/build"})
    assert done.returncode == 2
    assert (tmp_path / "calls.log").read_text().splitlines() == [
        "run --snapshot --image debian-6.1 scenarios/*.yaml",
        "run --snapshot --image debian-6.1 --qemu /opt/qemu/build scenarios/*.yaml"]
    assert "make matrix: no results for debian-6.1 on QEMU /opt/qemu/build" in done.stderr
    assert (tmp_path / "table-args").read_text().split()[2:] == [str(tmp_path / "results" / "run-0"),
                                                                 "--update", "docs/verdicts.md"]


@pytest.mark.parametrize("args, want", [
    ((), " --junitxml=results/nightly-junit.xml scenarios"),
    (("QEMU=debian-backports",), " --junitxml=results/nightly-junit.xml --qemu debian-backports scenarios"),
    (("QEMU=/src/qemu", "KERNEL=debian-6.12"), " --kernels debian-6.12 --qemu /src/qemu scenarios"),
])
def test_make_nightly_passes_qemu_to_the_scenario_items(args, want):
    line = [l for l in subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "nightly", "HOST_PACKAGES=",
                                       *args], capture_output=True, text=True, check=True).stdout.splitlines()
            if " -m pytest " in l and not l.startswith("echo")][0]
    assert " ".join(line.split(";", 1)[0].split()).endswith(want), line


def suite_script(*args: str) -> str:
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "suite", "HOST_PACKAGES=",
                          *args], capture_output=True, text=True, check=True).stdout
    return out[out.index("status=0; runs="):]


NOTHING_NEWER = """#!/bin/sh
# debian-rc with nothing newer in experimental: said, exit 5, no results folder.
echo "$*" >> calls.log
case "$*" in *debian-rc*) echo "image debian-rc: nothing newer" >&2; exit 5;; esac
n=$(ls -d results/run-* 2>/dev/null | wc -l)
mkdir -p results/run-$n && ln -sfn run-$n results/latest
exit ${CODE:-0}
"""


@pytest.mark.parametrize("target", ["suite", "matrix"])
def test_a_kernel_with_nothing_to_test_today_is_said_and_left_out_not_an_error(tmp_path, target):
    orch, py = fake_tools(tmp_path)
    orch.write_text(NOTHING_NEWER)
    script = (suite_script if target == "suite" else matrix_script)(f"ORCH={orch}", f"PY={py}",
                                                                    *(("QEMUS=system",) if target == "matrix" else ()))
    done = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert [c.split("--image ")[1].split()[0] for c in (tmp_path / "calls.log").read_text().splitlines()] == [
        "debian-6.1", "debian-6.12", "debian-7.3", "debian-rc"]
    assert f"make {target}: nothing to test on debian-rc today" in done.stderr
    assert (tmp_path / "table-args").read_text().split()[2:] == [
        *(str(tmp_path / "results" / f"run-{n}") for n in range(3)), "--update", "docs/verdicts.md"]


def test_a_failing_kernel_still_fails_the_suite(tmp_path):
    orch, py = fake_tools(tmp_path)
    done = subprocess.run(["sh", "-c", suite_script(f"ORCH={orch}", f"PY={py}")], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "CODE": "1"})
    assert done.returncode == 1 and len((tmp_path / "calls.log").read_text().splitlines()) == 4
