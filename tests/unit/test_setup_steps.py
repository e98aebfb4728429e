"""The guest set-up command: the step that failed is known from the exit status, never from output text."""
import subprocess

from orchestrator.runner import MACHINECHECK_SYSFS, NO_MCE_CHECK, setup_failure, setup_script

THP = "echo always > /sys/kernel/mm/transparent_hugepage/enabled"


def run(steps):
    done = subprocess.run(["sh", "-c", setup_script(steps)], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def test_a_failing_step_is_named_with_its_real_output_not_as_missing_machine_check_support():
    # Issue 22 item 6: a kernel without THP, with the machine-check sysfs there, was reported
    # as "no machine-check support": the marker was in the quoted command text.
    steps = ["true", "echo 'cannot write: No such file or directory' >&2; false", "echo never"]
    status, output = run(steps)
    error = setup_failure(steps, status, output)
    assert str(error).startswith("ssh: set-up step 2 of 3 failed: 'echo 'cannot write: No such file or directory' "
                                 ">&2; false': ")
    assert "cannot write: No such file or directory" in str(error) and "exit status 1" in str(error)
    assert "machine-check" not in str(error)
    status, output = run([NO_MCE_CHECK.replace(MACHINECHECK_SYSFS, "/nonexistent"), THP])
    assert status == 100


def test_no_machine_check_sysfs_is_said_so():
    error = setup_failure([NO_MCE_CHECK, THP], 100, "exit status 1\n")
    assert str(error).startswith(f"ssh: the guest kernel has no machine-check support (no {MACHINECHECK_SYSFS}")


def test_a_step_that_exits_itself_ends_only_that_step():
    status, output = run(["true", "echo mounted; exit 1", "echo never"])
    assert status == 101 and "never" not in output


def test_an_unknown_status_says_so():
    assert "no step reported failing" in str(setup_failure(["true"], 255, "Connection closed"))
