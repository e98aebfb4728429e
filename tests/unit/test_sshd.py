"""The local sshd's configuration, the pinned ssh that libvirt runs, the URI. Pure parts."""
from pathlib import Path

from orchestrator import sshd


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
        for _ in range(100):
            below = sshd.descendants(parent.pid)
            if len(below) >= 2:
                break
            time.sleep(0.02)
        names = {open(f"/proc/{pid}/comm").read().strip() for pid in below}
        assert len(below) >= 2 and names == {"sleep"}, below
    finally:
        for pid in sshd.descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
    assert sshd.descendants(parent.pid) == []
