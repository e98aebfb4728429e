"""Reproducing a scenario run: repro.sh (the same scenario, with the same inputs, through the
orchestrator, from any checkout) and qemu-by-hand.sh plus monitor-commands.hmp (the same QEMU
and the same monitor commands without the orchestrator). Pure: text in, text out.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_PLAIN = re.compile(r"^[A-Za-z0-9_./+-]+$")
_CPU_SUFFIX = re.compile(r" \(cpu (\d+)\)$")
_LOGGED = re.compile(r"^\s*[\d.]+ (\S+)(?: (.*))?$")
# QMP commands the harness sends, as the HMP lines that do the same by hand.
_QMP_AS_HMP = {"stop": "stop", "cont": "cont", "quit": "quit", "query-migrate": "info migrate",
               "query-status": "info status"}


def comment_value(value: object) -> str:
    """A value as it may stand in a `#` comment of a generated script: every character that is
    not printable (a newline above all, which would end the comment and start a command) is
    shown escaped, so the comment stays one line whatever the value holds."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def hmp_lines(command_log: str) -> list[str]:
    """monitor-commands.log (QMP, timestamped) -> the HMP lines to type at a (qemu) prompt."""
    lines = []
    for raw in command_log.splitlines():
        match = _LOGGED.match(raw)
        if not match:
            continue
        command = match.group(1)
        if command == "hmp":  # the harness's own HMP monitor: "hmp LINE [(cpu N)]"
            line = match.group(2) or ""
            cpu = _CPU_SUFFIX.search(line)
            if cpu:
                lines.append(f"cpu {cpu.group(1)}")
                line = line[:cpu.start()]
            lines.append(_one_line(line))
            continue
        try:
            arguments = json.loads(match.group(2)) if match.group(2) else {}
        except ValueError:
            # Not a QMP argument object (the libvirt backend logs e.g. "getfd NAME"): kept as a comment.
            lines.append(f"# {command} {match.group(2)} (no HMP equivalent)")
            continue
        if not isinstance(arguments, dict):
            lines.append(f"# QMP {command} {match.group(2)} (no HMP equivalent)")
            continue
        if command == "human-monitor-command":
            if "cpu-index" in arguments:
                lines.append(f"cpu {arguments['cpu-index']}")
            lines.append(_one_line(str(arguments["command-line"])))
        elif command == "migrate":
            lines.append(_one_line(f"migrate {arguments['uri']}"))
        elif command in _QMP_AS_HMP:
            lines.append(_QMP_AS_HMP[command])
        elif command != "qmp_capabilities":
            lines.append(f"# QMP {command} {json.dumps(arguments)} (no HMP equivalent)")
    return lines


def _one_line(line: str) -> str:
    """A monitor line as it may be typed: one holding a line break would be two commands."""
    return line if line.isprintable() else f"# not typed (holds a line break): {comment_value(line)}"


def by_hand_argv(argv: list[str], console_log: str = "console-by-hand.log") -> list[str]:
    """The run's QEMU command line with the harness's socketpair monitor replaced by an HMP
    monitor on the terminal, the console written beside the script, and not paused."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == "-chardev" and value.startswith("socket,id=qmp,"):
            i += 2
            continue
        if arg == "-chardev" and value.startswith(("socket,id=qmp-kept,", "socket,id=hmp,")):
            i += 4  # and its -mon
            continue
        if arg == "-mon" and value.startswith("chardev=qmp,"):
            out += ["-monitor", "stdio"]
            i += 2
            continue
        if arg == "-chardev" and value.startswith(("file,id=console,", "socket,id=console,")):
            out += [arg, f"file,id=console,path={console_log}"]
            i += 2
            continue
        if arg == "-S":
            # The harness starts QEMU paused to read its RAM map, then sends cont; by hand it just runs.
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


@dataclass(frozen=True)
class ProbeHint:
    """How the run started its probe, for qemu-by-hand.sh: the same page kind, found anew."""
    command: str       # the probe's command line in the guest, as the harness ran it
    binary: Path       # the probe on this host (the harness uploads it to REMOTE_PATH)
    remote_path: str
    client_key: Path   # the image's client key for the guest's sshd
    ssh_port: int      # the guest's sshd, forwarded on 127.0.0.1 (the by-hand QEMU keeps the port)


def probe_hint_lines(hint: ProbeHint) -> list[str]:
    """Comment lines saying how to start the probe so that the typed `mce` line hits a process's
    page: the run's address was that boot's page, a new boot puts the probe elsewhere."""
    port = str(hint.ssh_port)
    ssh = f"-p {shlex.quote(port)} -i {shlex.quote(str(hint.client_key))}"
    return ["# To hit a process's page as the run did, start its probe in the guest first, then type the",
            "# 'mce' line with the address the probe reports (each boot puts the page elsewhere):",
            f"#   scp -P {comment_value(shlex.quote(port))} -i {comment_value(shlex.quote(str(hint.client_key)))} "
            f"{comment_value(shlex.quote(str(hint.binary)))} root@127.0.0.1:{comment_value(hint.remote_path)}",
            f"#   ssh {comment_value(ssh)} root@127.0.0.1 {comment_value(shlex.quote(hint.command))}",
            "# Its first line, {\"event\":\"ready\",...,\"gpa\":\"0x...\",...}, names the target page's",
            "# guest-physical address: put it in place of the address in monitor-commands.hmp's 'mce' line",
            "# (raise the probe's --timeout, in seconds, to leave time for typing)."]


def by_hand_script(argv: list[str], scenario: str, disk_mib: int | None, probe: ProbeHint | None = None) -> str:
    lines = ["#!/bin/sh",
             f"# The QEMU of scenario {comment_value(scenario)}, without the orchestrator: the same command line, with an",
             "# HMP monitor on this terminal. At the (qemu) prompt, type the lines of monitor-commands.hmp",
             "# (the injection is the 'mce ...' line; the harness sent it while the vCPU was in user mode",
             "# where the scenario gates it). The guest's console goes to console-by-hand.log here;",
             "# its sshd takes the image's client key (keys/client_key beside the kernel) on the port below."]
    if "-incoming" in argv:
        lines += ["# The run restored a saved guest (-incoming): it starts paused at the moment it was saved,",
                  "# after its boot; the 'cont' line of monitor-commands.hmp starts it, and the console here",
                  "# shows only what comes after. The run's --cold boots it instead (its repro.sh says which)."]
    if probe is not None:
        lines += probe_hint_lines(probe)
    lines += ["set -eu", 'cd "$(dirname "$0")"']
    disk = next((a.split("file=", 1)[1].split(",", 1)[0] for a in argv if a.startswith("file=")), None)
    if disk_mib and disk:
        lines += ["# A fresh ext4 scratch disk, as the harness makes it.",
                  f"rm -f disk.img && truncate -s {disk_mib}M disk.img && mkfs.ext4 -q -F -L mce-scratch disk.img"]
        argv = [a.replace(f"file={disk},", "file=disk.img,") for a in argv]
    # One option and its value per line.
    words, i = [], 1
    while i < len(argv):
        pair = argv[i:i + 2] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else argv[i:i + 1]
        words.append(" ".join(shlex.quote(a) for a in pair))
        i += len(pair)
    lines.append(" \\\n    ".join([f"exec {shlex.quote(argv[0])}", *words]))
    return "\n".join(lines) + "\n"


def run_argv(*, scenario_file: str, image: str | None, kernel: Path | None, modules: Path | None,
             append: str, accel: str | None, snapshot: bool, disk_image: Path | None = None,
             allow_backing: tuple[Path, ...] = (), qemu: str | None = None) -> list[str]:
    """The `mce-orchestrator run` arguments that give the same inputs."""
    argv = ["run", scenario_file]
    if disk_image is not None:
        # Absolute: the scenario's own relative guest.disk_image does not resolve beside its copy.
        argv += ["--disk-image", str(Path(disk_image).resolve())]
        for backing in allow_backing:
            argv += ["--allow-backing", str(Path(backing).resolve())]
    elif image:
        argv += ["--image", image]
    if kernel is not None:
        argv += ["--kernel", str(kernel)]
    if modules is not None:
        argv += ["--modules", str(modules)]
    if append:
        argv += ["--append", append]
    if accel:
        argv += ["--accel", accel]
    if qemu:
        argv += ["--qemu", qemu]  # a name (fetched where missing) or this machine's path
    # Said either way: which a run does by default depends on its other options.
    argv.append("--snapshot" if snapshot else "--cold")
    return argv


@lru_cache(maxsize=None)
def git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def repro_script(*, scenario: str, run_args: list[str], commit: str | None, kernel_release: str | None,
                 qemu_version: str | None = None) -> str:
    """repro.sh: run it inside (or pass it) a checkout of the project, on any machine."""
    words, previous = [], None
    for arg in run_args[2:]:
        variable = {"--kernel": "MCE_KERNEL", "--modules": "MCE_MODULES", "--qemu": "MCE_QEMU"}.get(previous or "")
        # A kernel path is this machine's: another one sets MCE_KERNEL / MCE_MODULES.
        words.append(f'"${{{variable}:-{arg}}}"' if variable and _PLAIN.match(arg) else shlex.quote(arg))
        previous = arg
    quoted = " ".join(words)
    # Values from outside (the scenario's name and file, the guest's uname -r, git) only ever
    # appear quoted (shlex) or, in comments, with no newline left in them (comment_value).
    scenario, kernel_release, commit, qemu_version = (comment_value(v) if v else v
                                                      for v in (scenario, kernel_release, commit, qemu_version))
    return f"""#!/bin/sh
# Runs scenario {scenario} again with the inputs of this run (kernel {kernel_release or 'unknown'}{', QEMU ' + qemu_version if qemu_version else ''}).
# Usage: repro.sh [CHECKOUT]   CHECKOUT: a clone of mce-orchestrator (default: the current folder).
# The scenario is the copy beside this script ({comment_value(run_args[1])}), as it was when this run started.
# Recorded with the orchestrator at commit {commit or 'unknown'}: `git checkout {commit or 'COMMIT'}` in
# CHECKOUT runs the very same harness.{chr(10) + '# --kernel/--modules are paths on the machine that ran it: set MCE_KERNEL/MCE_MODULES elsewhere.' if '--kernel' in run_args else ''}
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "${{1:-.}}"
if [ ! -f orchestrator/cli.py ]; then
    echo "repro.sh: run it in a checkout of mce-orchestrator, or pass one" >&2
    exit 2
fi
make -s setup
# What the run recorded is checked, not only written down: another commit or kernel is said.
recorded_commit={shlex.quote(commit or '')}
now=$(git rev-parse HEAD 2>/dev/null || echo "no git commit")
if [ -n "$recorded_commit" ] && [ "$now" != "$recorded_commit" ]; then
    echo "repro.sh: this checkout is at $now, the run was recorded at $recorded_commit" \
         "(git checkout $recorded_commit for the very same harness)" >&2
fi
status=0
.venv/bin/mce-orchestrator run "$here"/{shlex.quote(run_args[1])} {quoted} || status=$?
recorded_kernel={shlex.quote(kernel_release or '')}
ran=$(.venv/bin/python -c 'import json; print(json.load(open("results/latest/report.json"))["scenarios"][0]["kernel_release"] or "")' 2>/dev/null || true)
if [ -n "$recorded_kernel" ] && [ -n "$ran" ] && [ "$ran" != "$recorded_kernel" ]; then
    echo "repro.sh: the run was recorded on kernel $recorded_kernel; this one ran kernel $ran" >&2
fi
exit $status
"""
