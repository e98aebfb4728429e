"""repro.sh, qemu-by-hand.sh and monitor-commands.hmp: the run again, with or without the orchestrator."""
import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.report import repro


LOG = """\
    0.012 qmp_capabilities
    1.950 human-monitor-command {"command-line": "stop"}
    1.951 human-monitor-command {"command-line": "info registers", "cpu-index": 0}
    1.952 human-monitor-command {"command-line": "mce 0 9 0xbd80000000000134 0x7 0x671e000 0x8c"}
    1.953 human-monitor-command {"command-line": "cont"}
    2.100 query-migrate
    3.000 quit
"""


def test_the_own_hmp_monitor_log_becomes_the_same_lines():
    log = ("    1.950 hmp stop\n    1.951 hmp info registers (cpu 2)\n"
           "    1.952 hmp mce 2 9 0xbd80000000000134 0x7 0x671e000 0x8c\n    1.953 hmp cont\n    3.000 quit\n")
    assert repro.hmp_lines(log) == ["stop", "cpu 2", "info registers", "mce 2 9 0xbd80000000000134 0x7 0x671e000 0x8c",
                                    "cont", "quit"]


def test_monitor_log_becomes_hmp_lines_to_type():
    assert repro.hmp_lines(LOG) == ["stop", "cpu 0", "info registers", "mce 0 9 0xbd80000000000134 0x7 0x671e000 0x8c",
                                    "cont", "info migrate", "quit"]


def config(**over):
    base = dict(kernel=Path("/c/vmlinux"), initrd=Path("/c/initrd.img"), console_log=Path("/r/a/console.log"),
                qmp_fd=5, ssh_port=4022, disk=Path("/tmp/mce-disk-x/disk.img"),
                kept_qmp_socket=Path("/tmp/mce-kept-y/qmp.sock"))
    return qemu_args.QemuConfig(**{**base, **over})


def test_by_hand_argv_has_a_terminal_monitor_and_no_harness_sockets():
    argv = repro.by_hand_argv(qemu_args.build_argv(config()))
    text = " ".join(argv)
    assert "fd=5" not in text and "qmp-kept" not in text and "mce-kept" not in text
    assert argv[argv.index("-monitor") + 1] == "stdio" and argv.count("-mon") == 0
    assert "file,id=console,path=console-by-hand.log" in argv
    assert argv[argv.index("-kernel") + 1] == "/c/vmlinux"


def test_by_hand_argv_drops_the_harness_console_and_hmp_sockets():
    argv = repro.by_hand_argv(qemu_args.build_argv(config(hmp_fd=6, console_fd=7)))
    text = " ".join(argv)
    assert "fd=" not in text and "id=hmp" not in text and "mode=readline" not in text
    assert "file,id=console,path=console-by-hand.log" in argv and argv.count("-monitor") == 1


def test_by_hand_script_makes_its_own_disk_and_is_valid_shell(tmp_path):
    script = repro.by_hand_script(repro.by_hand_argv(qemu_args.build_argv(config())), "file-dirty-ext4", 64)
    assert "truncate -s 64M disk.img && mkfs.ext4" in script and "file=disk.img," in script
    assert "/tmp/mce-disk-x" not in script
    path = tmp_path / "qemu-by-hand.sh"
    path.write_text(script)
    assert subprocess.run(["sh", "-n", str(path)]).returncode == 0


def test_repro_script_runs_the_same_inputs(tmp_path):
    args = repro.run_argv(scenario_file="srar-anon-access.yaml", image="debian-6.12", kernel=Path("/src/linux"),
                          modules=None, append="mce=no_cmci loglevel=8", accel="tcg", snapshot=True)
    script = repro.repro_script(scenario="srar-anon-access", run_args=args, commit="abc123", kernel_release="6.13.0")
    last = next(line for line in script.splitlines() if line.startswith(".venv/bin/mce-orchestrator run "))
    assert last.startswith('.venv/bin/mce-orchestrator run "$here"/srar-anon-access.yaml --image debian-6.12 ')
    assert '--kernel "${MCE_KERNEL:-/src/linux}"' in last
    assert "--append 'mce=no_cmci loglevel=8' --accel tcg --snapshot" in last
    assert "git checkout abc123" in script
    path = tmp_path / "repro.sh"
    path.write_text(script)
    assert subprocess.run(["sh", "-n", str(path)]).returncode == 0


def test_repro_script_refuses_a_folder_that_is_no_checkout(tmp_path):
    script = repro.repro_script(scenario="x", run_args=["run", "x.yaml"], commit=None, kernel_release=None)
    path = tmp_path / "repro.sh"
    path.write_text(script)
    proc = subprocess.run(["sh", str(path), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "checkout of mce-orchestrator" in proc.stderr


def test_by_hand_argv_runs_the_guest_the_harness_starts_paused():
    # The harness starts QEMU with -S to read its RAM map first; typed by hand nobody sends cont.
    argv = repro.by_hand_argv(qemu_args.build_argv(config(paused=True)))
    assert "-S" in qemu_args.build_argv(config(paused=True)) and "-S" not in argv


def test_a_hostile_scenario_file_name_or_kernel_release_leaves_repro_sh_inert(tmp_path):
    # A scenario file whose name goes on after ".yaml" (its stem passes the name check), and a
    # guest whose `uname -r` holds a newline: neither may become a line of its own.
    marker = tmp_path / "PWNED"
    hostile = f"x.yaml\ntouch {marker} #"  # '#': what the script puts after the value is a comment
    args = repro.run_argv(scenario_file=hostile, image="debian-6.1", kernel=None, modules=None, append="",
                          accel=None, snapshot=False)
    script = repro.repro_script(scenario=f"x\ntouch {marker} #", run_args=args, commit=f"c\ntouch {marker} #",
                                kernel_release=f"6.1\ntouch {marker} #")
    path = tmp_path / "repro.sh"
    path.write_text(script)
    proc = subprocess.run(["sh", str(path), str(tmp_path / "no-checkout")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and not marker.exists(), script
    # The exec line still names the file as it is, quoted.
    assert f'"$here"/{shlex.quote(hostile)} ' in script


def test_a_hostile_scenario_name_leaves_qemu_by_hand_sh_inert(tmp_path):
    marker = tmp_path / "PWNED"
    script = repro.by_hand_script(["true"], f"x\ntouch {marker} #", None)
    path = tmp_path / "qemu-by-hand.sh"
    path.write_text(script)
    subprocess.run(["sh", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert not marker.exists(), script


def test_a_monitor_line_holding_a_newline_is_not_typed_as_two():
    log = ' 1.0 human-monitor-command {"command-line": "info status\\nquit"}\n'
    assert repro.hmp_lines(log) == ["# not typed (holds a line break): info status\\nquit"]


def test_a_scenario_file_named_like_an_artifact_leaves_the_artifacts_intact(tmp_path):
    from orchestrator.runner import RunOptions, _write_repro
    from orchestrator.scenario import load_scenario
    catalog = Path(__file__).resolve().parents[2] / "scenarios"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for name in ("evidence.json", "repro.sh"):
        source = tmp_path / name
        text = (catalog / "srao-anon-late-kill.yaml").read_text()
        source.write_text(text.replace("name: srao-anon-late-kill", f"name: {Path(name).stem}"))
        scenario = load_scenario(source)
        (artifacts / "evidence.json").write_text('{"kept": true}\n')
        _write_repro(artifacts, scenario, RunOptions(), [], None)
        assert (artifacts / "evidence.json").read_text() == '{"kept": true}\n'
        assert (artifacts / "repro.sh").read_text().startswith("#!/bin/sh")
        copy = artifacts / "scenario" / f"{Path(name).stem}.yaml"
        assert copy.read_text() == source.read_text()
        assert f'"$here"/scenario/{Path(name).stem}.yaml' in (artifacts / "repro.sh").read_text()


def test_repro_script_says_when_the_commit_and_the_kernel_differ(tmp_path):
    """repro.sh checks what it records: a checkout at another commit, a run on another kernel."""
    checkout = tmp_path / "checkout"
    (checkout / "orchestrator").mkdir(parents=True)
    (checkout / "orchestrator" / "cli.py").write_text("")
    (checkout / "Makefile").write_text("setup:\n\t@true\n")
    venv = checkout / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    # A stand-in tool: the run "passes" on kernel 6.12.0 and leaves its report where the real one does.
    (venv / "mce-orchestrator").write_text(
        "#!/bin/sh\nmkdir -p results/r && ln -sfn r results/latest\n"
        "echo '{\"scenarios\": [{\"kernel_release\": \"6.12.0\"}]}' > results/r/report.json\nexit 1\n")
    (venv / "mce-orchestrator").chmod(0o755)
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    run_args = repro.run_argv(scenario_file="x.yaml", image="debian-6.1", kernel=None, modules=None, append="",
                              accel=None, snapshot=False)
    for commit, kernel, says in ((head, "6.12.0", []),
                                 ("f" * 40, "6.1.0-57-amd64",
                                  [f"this checkout is at {head}, the run was recorded at {'f' * 40}",
                                   "the run was recorded on kernel 6.1.0-57-amd64; this one ran kernel 6.12.0"])):
        script = tmp_path / "repro.sh"
        script.write_text(repro.repro_script(scenario="x", run_args=run_args, commit=commit, kernel_release=kernel))
        proc = subprocess.run(["sh", str(script), str(checkout)], capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr  # the run's own exit code
        for line in says:
            assert line in proc.stderr, proc.stderr
        if not says:
            assert "repro.sh:" not in proc.stderr, proc.stderr


def test_by_hand_script_says_how_to_start_the_probe_for_the_typed_mce_line(tmp_path):
    """The typed 'mce' line hits a process's page only if the probe runs first: the script says how,
    with the run's own probe command, the guest's forwarded port and the image's key."""
    argv = repro.by_hand_argv(qemu_args.build_argv(config()))
    marker = tmp_path / "PWNED"
    hint = repro.ProbeHint(command=f"/tmp/mce-probe --pages 4 --target 1 --mode late\ntouch {marker}",
                           binary=Path("/cache/probe/mce-probe-abc"), remote_path="/tmp/mce-probe",
                           client_key=Path("/cache/img/keys/client_key"), ssh_port=4022)
    script = repro.by_hand_script(argv, "srao-anon-late-kill", None, hint)
    assert "scp -P 4022 -i /cache/img/keys/client_key /cache/probe/mce-probe-abc root@127.0.0.1:/tmp/mce-probe" \
        in script, script
    assert "ssh -p 4022 -i /cache/img/keys/client_key root@127.0.0.1 '/tmp/mce-probe --pages 4 --target 1" in script
    assert '"gpa"' in script and "monitor-commands.hmp's 'mce' line" in script
    # Only comments: the hint runs nothing, and a newline in a value does not end its comment.
    assert all(line.startswith("#") for line in script.splitlines()[:12] if "mce-probe" in line)
    path = tmp_path / "qemu-by-hand.sh"
    path.write_text(script.replace("exec ", "exit 0 #", 1))
    subprocess.run(["sh", str(path)], capture_output=True, cwd=tmp_path)
    assert not marker.exists()
    # Without a hint (a run that never reached its probe), no such lines.
    assert "scp " not in repro.by_hand_script(argv, "srao-anon-late-kill", None)
