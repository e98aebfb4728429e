"""A misbehaving guest never breaks the harness: garbage, floods, storms, reboots and
panics at awkward moments each end in the right outcome naming the right cause,
within the deadline, with memory and artifacts inside the bounds of docs/reliability.md."""
import dataclasses
import resource
import shutil
import subprocess
import time
from pathlib import Path
from shlex import quote

import pytest

from orchestrator.observe import wait_failure_logged
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import Outcome
from orchestrator.probe import REMOTE_PATH
from orchestrator.scenario import Timeouts, load_scenario

from .conftest import REPO
from .test_faults import LATE_KILL, assert_nothing_left, run

FIVE_THOUSAND_DIGITS = "9" * 5000
# The bounds docs/reliability.md states per scenario.
MEMORY_BOUND_MIB = 200
ARTIFACTS_BOUND_MIB = 40

# Wraps the real probe: garbage before the ready line, si_addr as glibc prints a
# NULL pointer, and extra lines around the page-flags answer.
GARBLING_PROBE = f"""#!/bin/sh
if [ "$1" = --kpageflags ]; then
    echo '[1]'; {REMOTE_PATH}.real "$@"; status=$?; echo 'an extra line'; exit $status
fi
echo '[1]'
echo '{FIVE_THOUSAND_DIGITS}'
echo '{{"event":"noise","n":{FIVE_THOUSAND_DIGITS}}}'
{REMOTE_PATH}.real "$@" | while IFS= read -r line; do
    case "$line" in
    *'"event":"result"'*) line=$(echo "$line" | sed 's/"si_addr":"[^"]*"/"si_addr":"(nil)"/') ;;
    esac
    printf '%s\\n' "$line"
done
"""


def replace_probe(script: str, folder: Path):
    """A phase hook: before the probe starts, the guest's probe becomes `script` (the real one stays beside it)."""
    local = folder / "probe.sh"
    local.write_text(script)

    def hook(phase, ctx):
        if phase == "locate":
            deadline = Deadline(10, "fault")
            ctx.ssh.check(f"mv {REMOTE_PATH} {REMOTE_PATH}.real", deadline, "fault")
            ctx.ssh.upload(local, REMOTE_PATH, 0o755, deadline, "fault")
            # A command of its own (opened with retries) lets the SFTP channel end before the
            # probe's opens: dropbear refuses a channel while another is closing.
            ctx.ssh.check("true", deadline, "fault")
    return hook


def checks_of(result) -> dict:
    return {c.name: c for c in result.verdict.checks}


def test_garbage_from_the_probe_is_evidence_not_a_crash(tmp_path):
    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(observe=15))
    start = time.monotonic()
    result, port = run(tmp_path, scenario=scenario, hook=replace_probe(GARBLING_PROBE, tmp_path), snapshot=True)
    assert result.outcome == Outcome.ERROR and result.verdict, result.reasons
    checks = checks_of(result)
    assert checks["sigbus"].outcome == Outcome.ERROR
    assert checks["sigbus"].detail == "the probe reported an unreadable si_addr: '(nil)'"
    # Everything else was read past the garbage: the ready line after '[1]' and a
    # 5000-digit number, the page flags between extra lines.
    for name in ("guest alive", "page poisoned", "HardwareCorrupted", "other pages intact"):
        assert checks[name].outcome == Outcome.PASS, (name, checks[name].detail)
    transcript = (result.artifacts / "probe-transcript.txt").read_text()
    assert transcript.startswith('{"event":"started","pid":') and transcript.split("\n", 2)[1] == "[1]"
    assert FIVE_THOUSAND_DIGITS in transcript
    assert time.monotonic() - start < 60
    assert_nothing_left(result, port)


def in_background(ctx, command: str) -> None:
    """Start `command` in the guest a moment from now, without waiting for it."""
    ctx.ssh.check(f"(sleep 0.5; {command}) </dev/null >/dev/null 2>&1 &", Deadline(10, "fault"), "fault")


def test_the_srar_gate_stops_when_the_guest_panics(tmp_path):
    """The probe is stopped (the vCPU is never in its loop, so the gate keeps looking),
    then the guest panics: the gate ends at once, naming the panic, not at its deadline."""
    def stop_probe_then_panic(phase, ctx):
        if phase == "inject":
            ctx.ssh.check(f"kill -STOP {ctx.evidence.ready['pid']}", Deadline(5, "fault"), "fault")
            in_background(ctx, "echo c > /proc/sysrq-trigger")

    scenario = dataclasses.replace(load_scenario(REPO / "scenarios" / "srar-anon-access.yaml"),
                                   timeouts=Timeouts(inject=30))
    result, port = run(tmp_path, scenario=scenario, hook=stop_probe_then_panic, snapshot=True)
    assert result.outcome == Outcome.ERROR
    assert result.error.phase == "inject"
    assert result.error.message.startswith("the guest panicked before the machine check was sent"), result.error
    assert result.phases["inject"] < 10
    assert_nothing_left(result, port)


@pytest.mark.parametrize("name", ["srao-anon-late-kill", "srar-anon-access"])
def test_a_quiet_console_costs_no_deadline(tmp_path, name):
    """With a quiet console no kernel line reaches it: the wait finds the line in dmesg. The
    harness raises the console's level in its set-up (a downed guest's log must be complete),
    so the guest is made quiet again after that, as a guest that lowers it itself would be."""
    def quiet_again(phase, ctx):
        if phase == "locate":
            ctx.ssh.check("echo 0 > /proc/sys/kernel/printk", Deadline(5, "fault"), "fault")

    scenario = load_scenario(REPO / "scenarios" / f"{name}.yaml")
    result, port = run(tmp_path, scenario=scenario, extra_cmdline="loglevel=0", snapshot=True, hook=quiet_again)
    assert result.outcome == Outcome.PASS, result.reasons
    assert "Memory failure" not in (result.artifacts / "console.log").read_text(errors="replace")
    assert result.phases["observe"] < 10  # of 30
    assert_nothing_left(result, port)


def guest_tool(name: str, folder: Path) -> Path:
    """A small static program for the guest, from tests/integration/guest_tools/NAME.c."""
    source = Path(__file__).with_name("guest_tools") / f"{name}.c"
    binary = folder / name
    cc = shutil.which("musl-gcc") or "gcc"
    subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def artifacts_mib(result) -> float:
    return sum(f.stat().st_size for f in result.artifacts.rglob("*") if f.is_file()) / (1 << 20)


def test_a_qmp_event_storm_is_bounded_and_named(tmp_path):
    """The guest writes its pvpanic register in a loop (a GUEST_CRASHLOADED event per
    write) from before the injection to past the gathering: the `mce` reply and every
    other QMP answer still come, memory and artifacts stay within the bounds of docs/reliability.md,
    and the report names the storm."""
    storm = guest_tool("pvpanic_storm", tmp_path)

    def start_storm(phase, ctx):
        if phase == "inject":
            ctx.ssh.upload(storm, "/tmp/pvpanic_storm", 0o755, Deadline(10, "fault"), "fault")
            ctx.ssh.check("/tmp/pvpanic_storm 8 </dev/null >/dev/null 2>&1 &", Deadline(10, "fault"), "fault")
            time.sleep(1.0)  # the storm is on before the machine check is sent

    before = rss_peak_mib()
    result, port = run(tmp_path, scenario=load_scenario(LATE_KILL), hook=start_storm, snapshot=True)
    assert result.outcome == Outcome.PASS, result.reasons  # the kernel did its part
    storm_cause = [c for c in result.evidence.causes if c.startswith("event storm")]
    assert storm_cause and "GUEST_CRASHLOADED" in storm_cause[0], result.evidence.causes
    assert rss_peak_mib() - before < MEMORY_BOUND_MIB
    assert artifacts_mib(result) < ARTIFACTS_BOUND_MIB
    assert_nothing_left(result, port)


@pytest.mark.parametrize("how, cause", [
    ("reboot -f", "the guest rebooted (QEMU SHUTDOWN, reason guest-reset"),
    ("halt -f", "the guest halted (console: 'reboot: System halted')"),
    ("host reset", "the guest was reset from the host (QEMU SHUTDOWN, reason host-qmp-system-reset"),
])
def test_a_guest_that_goes_down_is_named_not_blamed(tmp_path, how, cause):
    """Mid-observe the guest reboots, halts, or is reset from the host: an ERROR naming
    that cause and the evidence it cost, not 'did not answer over SSH', well within
    the deadline."""
    def go_down(phase, ctx):
        if phase == "observe":
            if how == "host reset":
                ctx.guest.monitor.execute("system_reset")
            else:
                ctx.ssh.check(f"{how} </dev/null >/dev/null 2>&1 &", Deadline(5, "fault"), "fault")
            time.sleep(1.0)

    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(observe=20))
    result, port = run(tmp_path, scenario=scenario, hook=go_down, snapshot=True)
    assert result.outcome == Outcome.ERROR, result.reasons
    checks = checks_of(result)
    assert checks["guest alive"].outcome == Outcome.ERROR
    assert checks["guest alive"].detail.startswith(cause), checks["guest alive"].detail
    assert "did not answer over SSH" not in " ".join(result.reasons)
    assert result.evidence.causes[0].startswith(cause) and "cost the" in result.evidence.causes[0]
    assert result.phases["observe"] < 10
    assert_nothing_left(result, port)


FLOODING_PROBE = f"""#!/bin/sh
if [ "$1" = --kpageflags ]; then
    exec yes 'a page-flags answer that never ends'
fi
exec {REMOTE_PATH}.real "$@"
"""


def test_an_ssh_command_that_prints_without_end(tmp_path):
    """The page-flags part prints without end: its deadline holds while data streams,
    the output kept is capped, and only that part is lost."""
    before = rss_peak_mib()
    result, port = run(tmp_path, scenario=load_scenario(LATE_KILL), hook=replace_probe(FLOODING_PROBE, tmp_path),
                       snapshot=True)
    assert result.outcome == Outcome.ERROR, result.reasons
    checks = checks_of(result)
    assert checks["page poisoned"].outcome == Outcome.ERROR
    assert "did not finish within 5 s (it kept printing" in checks["page poisoned"].detail
    assert any(c.startswith("SSH output flood") and c.endswith("cost the kpageflags")
               for c in result.evidence.causes), result.evidence.causes
    for name in ("guest alive", "sigbus", "HardwareCorrupted", "other pages intact"):
        assert checks[name].outcome == Outcome.PASS, (name, checks[name].detail)
    assert result.phases["observe"] < 5 + 10
    assert rss_peak_mib() - before < MEMORY_BOUND_MIB
    assert artifacts_mib(result) < ARTIFACTS_BOUND_MIB
    assert_nothing_left(result, port)


@pytest.mark.parametrize("fault", ["killall -STOP dropbear", "ip link set eth0 down"])
def test_a_stalled_sshd_or_a_dead_network_costs_one_part_deadline(tmp_path, fault):
    """Every dropbear is stopped, or the guest's network goes down, mid-observe: the probe's
    answer, then one part, time out; sshd gives no banner, so the other parts are not
    tried; the cause is named."""
    def stall_sshd(phase, ctx):
        if phase == "observe":
            ctx.ssh.check(f"(sleep 0.3; {fault}) </dev/null >/dev/null 2>&1 &", Deadline(5, "fault"), "fault")
            time.sleep(1.0)

    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(observe=6))
    result, port = run(tmp_path, scenario=scenario, hook=stall_sshd, snapshot=True)
    assert result.outcome == Outcome.ERROR, result.reasons
    assert any(c.startswith("sshd stalled or the guest's network is down") for c in result.evidence.causes), \
        result.evidence.causes
    checks = checks_of(result)
    assert "sshd stalled" in checks["guest alive"].detail
    assert result.phases["observe"] < 6 + 5 + 2 + 3  # the phase, one part, one banner look
    assert_nothing_left(result, port)


def test_a_console_flood_is_capped_and_named(tmp_path, monkeypatch):
    """A guest loop writes to its serial port without end from the injection on: console.log
    stays within its cap (here lowered to 64 KiB so the test is quick) with its first part,
    a 'truncated' marker and the latest part; the kernel's lines are found in dmesg; the
    scenario still passes and the flood is named."""
    limit = 64 << 10  # the serial port takes some 80 KiB/s under TCG here
    monkeypatch.setattr("orchestrator.guest.qemu.CONSOLE_LIMIT", limit)

    def flood_console(phase, ctx):
        if phase == "inject":
            ctx.ssh.check("yes 'a console flood line from a guest loop' > /dev/ttyS0 2>/dev/null &",
                          Deadline(5, "fault"), "fault")
            time.sleep(1.0)

    result, port = run(tmp_path, scenario=load_scenario(LATE_KILL), hook=flood_console, snapshot=True)
    assert result.outcome == Outcome.PASS, result.reasons
    console = (result.artifacts / "console.log").read_bytes()
    assert len(console) <= limit
    assert b"bytes truncated here by mce-orchestrator" in console
    assert b"a console flood line from a guest loop" in console[-1000:]  # the latest part is kept
    assert any(c.startswith("console flood") for c in result.evidence.causes), result.evidence.causes
    assert_nothing_left(result, port)


def fill_console_to(ctx, size: int, tries: int = 3) -> int:
    """Write filler bytes (no newline: the tty adds none) to the guest's serial port until the
    host's console.log holds between `size` - 40 and `size` bytes; returns what it holds. A
    kernel line printed meanwhile may push it over and have it cut: then it is filled again."""
    console = ctx.guest.console_log
    for _ in range(tries):
        held = console.stat().st_size
        if size - 40 <= held <= size:
            return held
        deadline = Deadline(60, "fault")
        ctx.ssh.check(f"head -c {size - held} /dev/zero | tr '\\0' x > /dev/ttyS0", deadline, "fault")
        # The tty sends what it has buffered at the serial port's pace: wait for all of it
        # (or for the file to shrink: cut).
        last = console.stat().st_size
        while last < size and not deadline.expired():
            time.sleep(0.1)
            now = console.stat().st_size
            if now < last:
                break
            last = now
        time.sleep(0.3)
    return console.stat().st_size


def test_a_halt_line_that_crosses_the_console_cut_is_seen(tmp_path, monkeypatch):
    """The console is filled to a byte short of its cap (here lowered to 256 KiB), then the
    guest halts: the kernel's 'reboot: System halted' is the text that crosses the cap, in
    the chunk that makes the recorder cut the file. The halt is named at once, as with no cut
    (the console is the only sign of a halt: QEMU sends no event). The follower before jumped
    to the new end of the shrunk file and never saw the line: the guest was taken as alive
    but not answering."""
    limit = 256 << 10
    monkeypatch.setattr("orchestrator.guest.qemu.CONSOLE_LIMIT", limit)
    halted_at: list[float] = []

    def fill_then_halt(phase, ctx):
        if phase == "observe":
            # The injection's lines are out: the filler is the last thing before the halt.
            wait_failure_logged(ctx.guest, ctx.evidence.injected_address >> 12, Deadline(10, "fault"))
            time.sleep(0.5)
            held = fill_console_to(ctx, limit - 1)
            assert limit - 40 <= held <= limit, f"the console held {held} bytes, not {limit - 1}, before the halt"
            in_background(ctx, "halt -f")
            halted_at.append(time.monotonic() + 0.5)
            figure_line(f"item 6: console filled to {held} of {limit} bytes before the halt")

    # Early kill: the kernel's lines all come in the inject phase, none while the test fills.
    scenario = dataclasses.replace(load_scenario(REPO / "scenarios" / "srao-anon-early-kill.yaml"),
                                   timeouts=Timeouts(observe=20))
    start = time.monotonic()
    result, port = run(tmp_path, scenario=scenario, hook=fill_then_halt, snapshot=True)
    record_figures("item 6 halt at the console cut", result, time.monotonic() - start)
    figure_line(f"  verdict {time.monotonic() - halted_at[0]:.1f} s after the halt")
    console = (result.artifacts / "console.log").read_bytes()
    assert b"bytes truncated here by mce-orchestrator" in console and b"reboot: System halted" in console
    assert len(console) <= limit
    assert result.outcome == Outcome.ERROR, result.reasons
    checks = checks_of(result)
    assert checks["guest alive"].detail.startswith("the guest halted (console: 'reboot: System halted')"), \
        checks["guest alive"].detail
    assert time.monotonic() - halted_at[0] < 8
    assert_nothing_left(result, port)


def figure_line(text: str) -> None:
    """A line of the figures the issue asks for, appended to $MCE_FIGURES when set."""
    import os
    path = os.environ.get("MCE_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def record_figures(item: str, result, seconds: float, rss_growth_mib: float | None = None) -> None:
    """The figures the issue asks for (time to verdict, harness memory growth, artifacts)."""
    figure_line(f"{item}: {result.outcome.name} in {seconds:.1f} s; phases "
                f"{ {k: round(v, 1) for k, v in result.phases.items()} }; "
                f"rss growth {rss_growth_mib if rss_growth_mib is None else round(rss_growth_mib)} MiB; "
                f"peak rss {rss_peak_mib():.0f} MiB; "
                f"artifacts {artifacts_mib(result):.2f} MiB; "
                f"{(result.error.message if result.error else '; '.join(result.reasons))[:300]!r}")


def first_event_time(result, names: set[str]) -> float:
    """The wall-clock time of QEMU's first event of these names in this run's qmp-events.jsonl."""
    import json
    for line in (result.artifacts / "qmp-events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") in names:
            return event["timestamp"]["seconds"] + event["timestamp"]["microseconds"] / 1e6
    raise AssertionError(f"no {names} event")


def misbehaving_probe(when: str, then: str) -> str:
    """The probe, except that when its arguments start with `when` ('' for any) it does `then` first."""
    return f"""#!/bin/sh
case "$1" in
{when}*) {then} ;;
esac
exec {REMOTE_PATH}.real "$@"
"""


@pytest.mark.parametrize("scenario_name, when, then, cause", [
    ("srao-anon-late-kill", "", "echo c > /proc/sysrq-trigger", "the guest panicked before the machine check was sent"),
    ("srao-anon-late-kill", "", "reboot -f; sleep 60",
     "the guest rebooted (QEMU SHUTDOWN, reason guest-reset; -no-reboot keeps it down) before the machine check"),
    ("high-order-kernel-page", "--take-free-block", "echo c > /proc/sysrq-trigger",
     "the guest panicked before the machine check was sent"),
], ids=["panic-at-probe-start", "reboot-at-probe-start", "panic-at-race-process-start"])
def test_a_guest_that_goes_down_before_the_injection_is_named_at_once(tmp_path, scenario_name, when, then, cause):
    """The probe (or a race's process) brings the guest down as it starts: the locate
    wait ends within a second or two naming the panic or the reset, not at its 30 s
    deadline with 'probe sent no ready' or 'probe exited (status -1)'. No machine check
    was sent, so it is the run's ERROR: the scenario judges the kernel's handling of the
    machine check, which never happened."""
    scenario = load_scenario(REPO / "scenarios" / f"{scenario_name}.yaml")
    start = time.monotonic()
    result, port = run(tmp_path, scenario=scenario, hook=replace_probe(misbehaving_probe(when, then), tmp_path),
                       snapshot=True)
    record_figures(f"item 1 {scenario_name} {then.split(';')[0]}", result, time.monotonic() - start)
    figure_line(f"  verdict {time.time() - first_event_time(result, {'GUEST_PANICKED', 'SHUTDOWN'}):.1f} s "
                f"after the guest went down")
    assert result.outcome == Outcome.ERROR and result.verdict is None, result.reasons
    assert result.error.phase == "locate", result.error
    assert result.error.message.startswith(cause), result.error.message
    assert "probe exited" not in result.error.message
    if "panicked" in cause:
        assert "Kernel panic - not syncing: sysrq triggered crash" in result.error.message
    # The verdict within a second or two of the event (QEMU's own clock), not at the deadline.
    assert time.time() - first_event_time(result, {"GUEST_PANICKED", "SHUTDOWN"}) < 3
    assert_nothing_left(result, port)


# Wraps the real probe: just before its result line, a forged one from "pid 1" with a
# wrong si_addr goes to the same stream.
FORGING_PROBE = f"""#!/bin/sh
[ "$1" = --kpageflags ] && exec {REMOTE_PATH}.real "$@"
{REMOTE_PATH}.real "$@" | while IFS= read -r line; do
    case "$line" in
    *'"event":"result"'*) echo "$line" | sed 's/"pid":[0-9]*/"pid":1/; s/"si_addr":"[^"]*"/"si_addr":"0xdead000"/' ;;
    esac
    printf '%s\\n' "$line"
done
"""


def test_a_forged_result_line_is_ignored_and_the_real_one_used(tmp_path):
    """A result line from another process (pid 1, a wrong si_addr) on the probe's stream
    before the real one: it is ignored and noted, and the real result is judged."""
    start = time.monotonic()
    result, port = run(tmp_path, scenario=load_scenario(LATE_KILL), hook=replace_probe(FORGING_PROBE, tmp_path),
                       snapshot=True)
    record_figures("item 5 forged result", result, time.monotonic() - start)
    assert result.outcome == Outcome.PASS, result.reasons
    assert result.evidence.probe_result["pid"] == result.evidence.ready["pid"]
    assert any(c.startswith("1 result line(s) not from the probe the harness started were ignored (pid 1;")
               for c in result.evidence.causes), result.evidence.causes
    assert '"pid":1,' in (result.artifacts / "probe-transcript.txt").read_text()
    assert_nothing_left(result, port)


# Wraps the real probe: a ready report and a result that claim pid 1 go to the stream just
# before the real ones; the forged result says no SIGBUS came.
FORGED_READY_PROBE = f"""#!/bin/sh
[ "$1" = --kpageflags ] && exec {REMOTE_PATH}.real "$@"
{REMOTE_PATH}.real "$@" | while IFS= read -r line; do
    case "$line" in
    *'"event":"ready"'*) echo "$line" | sed 's/"pid":[0-9]*/"pid":1/' ;;
    *'"event":"result"'*) echo "$line" | sed 's/"pid":[0-9]*/"pid":1/; s/"sigbus":true/"sigbus":false/' ;;
    esac
    printf '%s\\n' "$line"
done
"""


def test_a_forged_ready_report_before_the_real_one_is_no_verdict(tmp_path):
    """Another process's ready report (pid 1) comes before the probe's, then its result (no
    SIGBUS). Taking the first ready report made pid 1 the probe, and the negative control
    that expects no SIGBUS PASSed on the forged result (the kernel did send one). Two
    ready reports are one too many: an ERROR, not a verdict on the kernel."""
    scenario = load_scenario(REPO / "tests" / "integration" / "negative" / "neg-expects-no-sigbus.yaml")
    result, port = run(tmp_path, scenario=scenario, hook=replace_probe(FORGED_READY_PROBE, tmp_path), snapshot=True)
    assert result.outcome == Outcome.ERROR, result.reasons
    check = checks_of(result)["probe's reports"]
    assert check.outcome == Outcome.ERROR and check.detail.startswith("2 ready reports on the probe's stream"), check
    assert any("the ready report came from pid 1, not the probe the harness started" in c
               for c in result.evidence.causes), result.evidence.causes
    assert_nothing_left(result, port)


@pytest.mark.parametrize("command, cause", [
    ("echo 'reboot: System halted' > /dev/console",
     "'reboot: System halted' on the console while the vCPUs kept running: text userspace wrote"),
    ("echo '<0>Kernel panic - not syncing: a user process wrote this' > /dev/kmsg",
     "1 line(s) a user process wrote to /dev/kmsg posing as the kernel's were left out of the kernel log"),
], ids=["halt-line-on-console", "panic-line-in-kmsg"])
def test_userspace_text_is_not_taken_as_the_kernels(tmp_path, command, cause):
    """Mid-observe a user process writes a halt line to the console, or a panic line to
    /dev/kmsg: the live guest is not taken as halted, the kernel not as crashed; the
    scenario passes on the kernel's own evidence and the text is named."""
    def write_text(phase, ctx):
        if phase == "observe":
            ctx.ssh.check(command, Deadline(5, "fault"), "fault")

    start = time.monotonic()
    result, port = run(tmp_path, scenario=load_scenario(LATE_KILL), hook=write_text, snapshot=True)
    record_figures(f"item 4 {command.split('>')[-1].strip()}", result, time.monotonic() - start)
    assert result.outcome == Outcome.PASS, result.reasons
    assert any(c.startswith(cause) for c in result.evidence.causes), result.evidence.causes
    assert "a user process wrote this" not in (result.artifacts / "guest-kernel.log").read_text()
    assert_nothing_left(result, port)


# The real probe, whose stream carries a hundred 1,000,000-byte lines right after its
# ready line: whatever it says next (its answers, its result) waits behind them.
LONG_LINES_PROBE = f"""#!/bin/sh
[ "$1" = --kpageflags ] && exec {REMOTE_PATH}.real "$@"
{REMOTE_PATH}.real "$@" | while IFS= read -r line; do
    printf '%s\\n' "$line"
    case "$line" in
    *'"event":"ready"'*) i=0; while [ $i -lt 100 ]; do head -c 1000000 /dev/zero | tr '\\0' a; echo; i=$((i + 1)); done ;;
    esac
done
"""


def test_a_probe_printing_long_lines_is_bounded_in_bytes_and_named(tmp_path):
    """Once the probe is ready, its stream carries 1,000,000-byte lines without end: the
    harness's memory and the transcript stay bounded in bytes, and the flood is named
    as the cause of the missing result at once, not after the observe deadline."""
    before = rss_peak_mib()
    start = time.monotonic()
    result, port = run(tmp_path, scenario=load_scenario(LATE_KILL), hook=replace_probe(LONG_LINES_PROBE, tmp_path),
                       snapshot=True)
    growth = rss_peak_mib() - before
    record_figures("item 2 long lines", result, time.monotonic() - start, growth)
    figure_line(f"  transcript {(result.artifacts / 'probe-transcript.txt').stat().st_size} bytes")
    assert result.outcome == Outcome.ERROR, result.reasons
    assert any(c.startswith("probe output flood: ") and "lines of up to 1000000 bytes" in c
               and c.endswith("cost the probe result") for c in result.evidence.causes), result.evidence.causes
    # Of 30 s: the flood is named once 2 MiB came (some 3 s at this guest's 0.6 MB/s under
    # TCG), then the parts are gathered from a guest still busy printing.
    assert result.phases["observe"] < 20
    assert growth < 100
    assert (result.artifacts / "probe-transcript.txt").stat().st_size < 5 << 20
    assert_nothing_left(result, port)


@pytest.mark.parametrize("scenario_name", ["different-compound-page", "high-order-kernel-page"])
def test_a_race_is_forced_only_when_the_kernel_saw_it(tmp_path, scenario_name):
    """A guest process on the race process's vCPU polls /proc/kpageflags and writes to
    /proc/sysrq-trigger throughout: the race is reported forced only when the kernel's
    struct page at the held moment and the race process's own end state agree; otherwise
    the run is an ERROR 'not forced' (or 'could not force'), never a FAIL of the kernel."""
    meddler = guest_tool("race_interferer", tmp_path)

    def meddle(phase, ctx):
        if phase == "inject":  # the race's process has started (its kallsyms look is slow enough as it is)
            ctx.ssh.upload(meddler, "/tmp/race_interferer", 0o755, Deadline(10, "fault"), "fault")
            ctx.ssh.check("/tmp/race_interferer 1 60 m </dev/null >/dev/null 2>&1 &", Deadline(10, "fault"), "fault")

    start = time.monotonic()
    result, port = run(tmp_path, scenario=load_scenario(REPO / "scenarios" / f"{scenario_name}.yaml"), hook=meddle,
                       snapshot=True)
    record_figures(f"item 3 {scenario_name}", result, time.monotonic() - start)
    assert result.outcome in (Outcome.PASS, Outcome.ERROR), result.reasons
    if result.outcome == Outcome.ERROR:
        assert result.error is not None and "could not force the interleaving" in result.error.message, result.reasons
    assert_nothing_left(result, port)


def start_forger(ctx, forger: Path, option: str, mode: str) -> None:
    """Start the forger in the guest and wait until it traces the race process (it must, before
    the machine check goes: the phase hook runs just before it)."""
    ctx.ssh.upload(forger, "/tmp/mailbox_forger", 0o755, Deadline(10, "fault"), "fault")
    ctx.ssh.check(f"rm -f /tmp/forger.ready; /tmp/mailbox_forger {quote(str(ctx.scenario.inject.cpu + 1))} "
                  f"{option} 60 {mode} /tmp/forger.ready </dev/null >/tmp/forger.log 2>&1 & "
                  "i=0; while [ ! -e /tmp/forger.ready ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done; "
                  "[ -e /tmp/forger.ready ] || { cat /tmp/forger.log; exit 1; }", Deadline(30, "fault"), "fault")


@pytest.mark.parametrize("mode, error", [
    ("forge", "could not force the interleaving: not forced: the process says it took the block, but at the held "
              "moment PFN "),
    ("kill", "could not force the interleaving: the race process was killed by signal 7 (SIGBUS)"),
])
def test_a_forged_or_killed_race_process_is_named_not_judged(tmp_path, monkeypatch, mode, error):
    """A guest process traces the race process's system calls from its vCPU and, as the process
    comes back from its gate (getpriority(), where the harness held it) and before it allocates
    anything, either stops it and writes 'taken' into its mailbox (forge), or kills it with
    SIGBUS as a poisoned page would (kill). Forged: the held moment's struct page (the page
    still in a free block) says otherwise: an ERROR 'not forced', not the kernel's FAIL for the
    'free buddy page' it then rightly reports (the code before took the mailbox's word: FAIL).
    Killed: the ERROR names the death, not the last mailbox state ('allocating'). Each attempt
    meets the forger, so the run is an ERROR after every attempt (two here, to save a boot)."""
    from orchestrator.inject import races
    monkeypatch.setattr(races, "ATTEMPTS", 2)
    forger = guest_tool("mailbox_forger", tmp_path)

    def forge(phase, ctx):
        if phase == "inject":
            start_forger(ctx, forger, "--take-free-block", mode)

    start = time.monotonic()
    result, port = run(tmp_path, scenario=load_scenario(REPO / "scenarios" / "high-order-kernel-page.yaml"),
                       hook=forge, snapshot=True)
    record_figures(f"item 3 race process {mode}", result, time.monotonic() - start)
    assert result.outcome == Outcome.ERROR and result.verdict is None, result.reasons
    assert result.error.phase == "inject" and error in result.error.message, result.error.message
    assert "(attempt 2 of 2;" in result.error.message
    if mode == "forge":
        assert "it is in a free buddy block of order" in result.error.message, result.error.message
    assert result.phases["inject"] < 15
    assert_nothing_left(result, port)


@pytest.mark.parametrize("failures, outcome", [(1, Outcome.PASS), (3, Outcome.ERROR)])
def test_a_race_not_forced_is_tried_again_in_a_fresh_guest(tmp_path, monkeypatch, failures, outcome):
    """The harness's hold of the injected vCPU is made to end early `failures` times (the
    mailbox read as 'allocating'): each such attempt is set aside in race-attempt-N/ and
    the race runs again in a fresh guest. Once forced it is judged (PASS); not forced in
    any of the 3 attempts, the run is an ERROR that says so, never a verdict."""
    from orchestrator.inject import races
    from orchestrator.inject.races import highorder
    real = highorder.TakeFreeBlock._wait_taken
    calls = []

    def wait_taken(self, monitor, since):
        calls.append(since)
        if len(calls) <= failures:
            return 2, 0, 0  # "allocating": what a hold that ran out looks like
        return real(self, monitor, since)

    monkeypatch.setattr(highorder.TakeFreeBlock, "_wait_taken", wait_taken)
    result, port = run(tmp_path, scenario=load_scenario(REPO / "scenarios" / "high-order-kernel-page.yaml"),
                       snapshot=True)
    assert result.outcome == outcome, result.reasons
    assert len(calls) == min(failures + 1, races.ATTEMPTS)
    set_aside = sorted(p.name for p in result.artifacts.glob("race-attempt-*"))
    assert set_aside == [f"race-attempt-{n}" for n in range(1, min(failures + 1, races.ATTEMPTS))]
    for folder in set_aside:
        assert (result.artifacts / folder / "console.log").stat().st_size > 0
    if outcome == Outcome.ERROR:
        assert result.verdict is None
        assert result.error.message.startswith("could not force the interleaving: the guest process on vCPU 1: "
                                               "allocating"), result.error.message
        assert result.error.message.endswith(f"(attempt 3 of 3; the others are in {result.artifacts}/race-attempt-N)")
    else:
        assert result.injection is not None and (result.artifacts / "evidence.json").exists()
    assert_nothing_left(result, port)


def test_the_same_scenario_twice_in_one_run_keeps_both_folders(tmp_path):
    first, _ = run(tmp_path, scenario=load_scenario(LATE_KILL), snapshot=True)
    second, port = run(tmp_path, scenario=load_scenario(LATE_KILL), snapshot=True)
    assert (first.name, second.name) == ("srao-anon-late-kill", "srao-anon-late-kill.2")
    assert first.artifacts != second.artifacts
    assert (first.artifacts / "evidence.json").exists() and (second.artifacts / "evidence.json").exists()
    assert first.outcome == second.outcome == Outcome.PASS, (first.reasons, second.reasons)
    assert_nothing_left(second, port)


def test_a_machine_check_qemu_cannot_deliver_is_named_as_qemus_reset(tmp_path):
    """broadcast-srao-smp2 on a guest booted with maxcpus=1: vCPU 1 never comes online, so
    machine checks are not enabled on it, and QEMU answers the broadcast with a reset
    (MEMORY_FAILURE action reset). The run's ERROR names QEMU's reset and why, not a
    broken monitor pipe or a guest that rebooted by itself."""
    result, port = run(tmp_path, scenario=load_scenario(REPO / "scenarios" / "broadcast-srao-smp2.yaml"),
                       extra_cmdline="maxcpus=1")
    assert result.outcome == Outcome.ERROR and result.error.phase == "inject", result.reasons
    assert result.error.message.startswith("QEMU reset the guest: a vCPU had machine checks disabled"), \
        result.error.message
    assert_nothing_left(result, port)
