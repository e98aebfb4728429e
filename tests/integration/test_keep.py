"""run --keep: the guest stays up after its scenario; inject (by PID+VA through the guest's
pagemap, by GPA with raw fields, gated for action-required) and ssh (pinned host key) reach
it from other processes; Ctrl-C/SIGTERM shuts it down and leaves nothing behind."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import REPO, process_alive


def tool(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_a_kept_guest_can_be_poked_and_is_cleaned_up(tmp_path):
    results = tmp_path / "results"
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "--keep", "always", "--results",
                            str(results), "srao-anon-late-kill"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        # results/latest is pointed at the run when it ends; the run folder exists from the start.
        while not list(results.glob("*/srao-anon-late-kill/kept.json")):
            assert run.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "the guest was never kept"
            time.sleep(0.5)
        state_file = next(results.glob("*/srao-anon-late-kill/kept.json"))
        time.sleep(0.2)
        state = json.loads(state_file.read_text())
        socket_dir = Path(state["qmp_socket"]).parent
        assert oct(socket_dir.stat().st_mode & 0o777) == "0o700"
        assert "PRIVATE KEY" not in state_file.read_text()
        g = ["--results", str(results)]

        # ssh: a command in the guest, with the pinned key...
        proc = tool("ssh", *g, "uname", "-r")
        assert proc.returncode == 0 and proc.stdout.strip() == state["kernel_release"], proc.stderr
        # ...and refused when the pinned key is not the guest's (negative control).
        forged = tmp_path / "forged"
        forged.mkdir()
        (forged / "known_hosts").write_text(f"[127.0.0.1]:{state['ssh_port']} ssh-ed25519 "
                                            "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        (forged / "kept.json").write_text(json.dumps({**state, "known_hosts": str(forged / "known_hosts")}))
        proc = tool("ssh", "--guest", str(forged), "true")
        assert proc.returncode == 255 and "Host key verification failed" in proc.stderr, proc.stderr

        def sleeper() -> tuple[str, int]:
            """A process in the guest, and an address in a page it has: the top page of its stack."""
            pid = tool("ssh", *g, "sh -c 'sleep 600 >/dev/null 2>&1 & echo $!'").stdout.strip()
            maps = tool("ssh", *g, f"cat /proc/{pid}/maps").stdout
            stack = next(line for line in maps.splitlines() if line.endswith("[stack]"))
            return pid, int(stack.split("-")[1].split()[0], 16) - 4096 + 0x10

        pid, va = sleeper()

        # By PID + VA, SRAO: translated in the guest, and memory_failure() logs that very PFN.
        proc = tool("inject", *g, "--pid", pid, "--va", hex(va), "--preset", "srao")
        assert proc.returncode == 0, proc.stderr
        pfn = int(re.search(r"-> PFN (0x[0-9a-f]+)", proc.stdout).group(1), 16)
        assert f"mce 0 9 0xbd000000000000c0 0x5 {(pfn << 12) + 0x10:#x} 0x8c" in proc.stdout
        dmesg = ""
        for _ in range(20):
            dmesg = tool("ssh", *g, "dmesg").stdout
            if f"Memory failure: {pfn:#x}:" in dmesg:
                break
            time.sleep(0.5)
        assert f"Memory failure: {pfn:#x}:" in dmesg, dmesg[-2000:]

        # The poisoned page is gone from the process: its PTE is a hwpoison entry now.
        proc = tool("inject", *g, "--pid", pid, "--va", hex(va), "--preset", "srao")
        assert proc.returncode == 2 and "already poisoned" in proc.stderr, proc.stderr

        # SRAR, gated: a sleeping process never runs its code in user mode, so nothing is sent.
        pid, va = sleeper()
        proc = tool("inject", *g, "--pid", pid, "--va", hex(va), "--preset", "srar", "--timeout", "3")
        assert proc.returncode == 2 and "was never in user mode in the target's code" in proc.stderr, proc.stderr
        assert not re.search(r"mce 0 9 0xbd80000000000134", (state_file.parent / "kept-monitor-commands.log").read_text())

        # By GPA with raw fields; an address outside guest RAM is refused before anything is sent.
        proc = tool("inject", *g, "--gpa", "0x40000000", "--bank", "9", "--status", "0xbd000000000000c0",
                    "--mcg-status", "5", "--misc", "0x8c")
        assert proc.returncode == 2 and "outside guest RAM" in proc.stderr, proc.stderr
        proc = tool("inject", *g, "--gpa", hex(0x2000000), "--bank", "9", "--status", "0xbd000000000000c0",
                    "--mcg-status", "5", "--misc", "0x8c")
        assert proc.returncode == 0 and "mce 0 9 0xbd000000000000c0 0x5 0x2000000 0x8c" in proc.stdout, proc.stderr
        assert run.poll() is None  # still kept
    finally:
        run.send_signal(signal.SIGTERM)
        code = run.wait(60)
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]  # the scenario passed before it was kept
    assert not process_alive(state["qemu_pid"])
    assert not state_file.exists() and not socket_dir.exists()


def test_decode_explains_the_srar_preset():
    proc = tool("decode", "0xbd80000000000134", "0x7")
    assert proc.returncode == 0
    assert "SRAR: software recoverable, action required" in proc.stdout
    assert "MCACOD 0x0134: cache hierarchy error: data read, data transaction, level 0 cache" in proc.stdout
    assert "bit 2 MCIP" in proc.stdout


def test_inject_on_a_kept_guest_says_what_the_guest_did(tmp_path):
    """After each inject: the guest's state (still running, or down and why, from QMP events on
    the kept monitor) and the kernel's lines; a UCNA, which QEMU cannot deliver as one, is
    refused unless asked for anyway; once the guest panicked, the run says so and ssh and
    inject refuse it at once instead of hanging."""
    results = tmp_path / "results"
    log_file = tmp_path / "run.log"
    log = log_file.open("w")
    run = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "--keep", "always", "--results",
                            str(results), "srao-anon-late-kill"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not list(results.glob("*/srao-anon-late-kill/kept.json")):
            assert run.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, "the guest was never kept"
            time.sleep(0.5)
        time.sleep(0.2)
        g = ["--results", str(results)]

        # Outside the kept guest's RAM map (the legacy VGA window): refused, as `run` refuses it.
        proc = tool("inject", *g, "--gpa", "0xc0000")
        assert proc.returncode == 2 and "outside guest RAM" in proc.stderr, proc.stderr

        proc = tool("inject", *g, "--gpa", "0x2000000", "--preset", "srao")
        assert proc.returncode == 0, proc.stderr
        assert "guest: still running" in proc.stdout, proc.stdout
        assert "kernel: Memory failure: 0x2000:" in proc.stdout, proc.stdout

        proc = tool("inject", *g, "--gpa", "0x2100000", "--preset", "ucna")
        assert proc.returncode == 2 and "a UCNA cannot be delivered as one" in proc.stderr, proc.stderr

        # Watched until the panic's event (it ends the watch): a loaded host's guest takes longer than 5 s.
        proc = tool("inject", *g, "--gpa", "0x2100000", "--preset", "ucna", "--anyway", "--watch", "60")
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert re.search(r"guest: DOWN: the guest panicked: Kernel panic - not syncing: ", proc.stdout), proc.stdout

        for _ in range(20):
            if "the kept guest is down: the guest panicked" in log_file.read_text():
                break
            time.sleep(0.5)
        assert "the kept guest is down: the guest panicked" in log_file.read_text()
        started = time.monotonic()
        proc = tool("ssh", *g, "true", timeout=60)
        assert proc.returncode == 2 and "the kept guest is down: the guest panicked" in proc.stderr, proc.stderr
        assert time.monotonic() - started < 20
        proc = tool("inject", *g, "--gpa", "0x2000000", "--preset", "srao")
        assert proc.returncode == 2 and "the kept guest is down" in proc.stderr, proc.stderr
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(60)
        log.close()
