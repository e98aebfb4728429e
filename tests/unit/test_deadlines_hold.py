"""Retries tick inside one deadline and never extend it (against a port nobody answers on)."""
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.guest.ssh import SshSession, wait_for_banner
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError


@pytest.fixture
def silent_port():
    """A port that accepts connections and never says anything (like slirp before sshd is up)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


@pytest.fixture
def client_key(tmp_path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    return tmp_path / "k"


def test_banner_wait_keeps_its_deadline(silent_port):
    start = time.monotonic()
    with pytest.raises(HarnessError, match="no SSH banner on 127.0.0.1:.* within 1.5 s"):
        wait_for_banner(silent_port, Deadline(1.5, "boot"))
    assert time.monotonic() - start < 2.5


def test_login_retries_keep_their_deadline(silent_port, client_key):
    session = SshSession(silent_port, client_key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBUFaVhR0mtb6NsaN3C6fW+1fBQX1ER39K3/7vXv5Yh6")
    start = time.monotonic()
    with pytest.raises(HarnessError, match="cannot log in to 127.0.0.1:.* within 1.5 s"):
        session.connect(Deadline(1.5, "ssh"))
    assert time.monotonic() - start < 3.0


def test_an_error_raised_while_ctrl_c_was_handled_is_the_interrupt():
    """What an SFTP transfer's clean-up raises after Ctrl-C (its close timing out) must not be
    taken for a failed upload and retried: the run stops (seen: an upload's close waiting for
    ever after SIGTERM mid-transfer)."""
    from orchestrator.guest.ssh import interrupted
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TimeoutError("the close's answer never came")
    except TimeoutError as exc:
        assert interrupted(exc)
    try:
        try:
            raise EOFError
        except EOFError:
            raise TimeoutError("a plain timeout")
    except TimeoutError as exc:
        assert not interrupted(exc)
