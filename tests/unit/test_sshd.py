"""The local sshd's configuration, the pinned ssh that libvirt runs, the URI. Pure parts."""
from pathlib import Path

from orchestrator.guest.libvirt import sshd


def test_config_is_loopback_keys_only_own_files():
    text = sshd.sshd_config(2222, Path("/d"))
    lines = set(text.splitlines())
    assert {"Port 2222", "ListenAddress 127.0.0.1", "HostKey /d/host_ed25519", "AuthorizedKeysFile /d/authorized_keys",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
            "PidFile /d/sshd.pid"} <= lines


def test_wrapper_pins_the_host_key():
    text = sshd.ssh_wrapper(Path("/d/known hosts"))
    assert "UserKnownHostsFile='/d/known hosts'" in text and "StrictHostKeyChecking=yes" in text
    assert "GlobalKnownHostsFile=/dev/null" in text and text.rstrip().endswith('"$@"')


def test_uri():
    assert sshd.libvirt_uri(2222, Path("/d/k"), Path("/d/ssh")) == \
        "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/d/k&command=/d/ssh&no_tty=1"


def test_descendants_reach_grandchildren_in_other_sessions():
    """What stop() kills: sshd's sessions call setsid(), so no process group reaches them."""
    import os
    import subprocess
    import time
    parent = subprocess.Popen(["sh", "-c", "setsid sleep 30 & sleep 30 & wait"])
    try:
        def comm(pid):
            try:
                return open(f"/proc/{pid}/comm").read().strip()
            except OSError:
                return "gone"
        for _ in range(200):  # until both children have exec'd sleep (a fork is "sh" for a moment)
            below = sshd.descendants(parent.pid)
            names = [comm(pid) for pid in below]
            if names == ["sleep", "sleep"]:
                break
            time.sleep(0.02)
        assert names == ["sleep", "sleep"], (below, names)
    finally:
        for pid in sshd.descendants(parent.pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        parent.kill()
        parent.wait()
    assert sshd.descendants(parent.pid) == []
