"""The reaper libvirtd runs under: it adopts the processes libvirtd daemonizes
(QEMUs) and reaps them at once, so a domain destroy does not wait for the
container's pid 1 to reap a zombie QEMU."""
import subprocess
import sys
import textwrap

# Runs under the reaper in libvirtd's place: it leaves an orphan (as libvirtd's
# daemonized QEMU) and exits 0 only if the reaper adopted it and it was gone at once
# after exiting (not a zombie waiting for pid 1).
ORPHAN_CHECK = textwrap.dedent("""
    import os, subprocess, sys, time
    pid = int(subprocess.run(["sh", "-c", "sleep 0.5 </dev/null >/dev/null 2>&1 & echo $!"], capture_output=True, text=True).stdout)
    ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    if ppid != os.getppid():
        sys.exit(f"the orphan's parent is {ppid}, not the reaper {os.getppid()}")
    end = time.monotonic() + 0.5 + 0.5
    while time.monotonic() < end:
        try:
            open(f"/proc/{pid}/stat").read()
        except OSError:
            sys.exit(0)
        time.sleep(0.01)
    sys.exit("the orphan was not reaped within 0.5 s of exiting")
""")


def test_orphans_are_adopted_and_reaped_at_once():
    done = subprocess.run([sys.executable, "-m", "orchestrator.guest.libvirt.daemons", "--reap", sys.executable, "-c", ORPHAN_CHECK],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_the_reaper_exits_with_its_childs_status():
    done = subprocess.run([sys.executable, "-m", "orchestrator.guest.libvirt.daemons", "--reap", "/bin/sh", "-c", "exit 3"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
