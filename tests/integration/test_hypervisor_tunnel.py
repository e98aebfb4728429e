"""The tunnel to a port on a remote libvirt host's loopback, against a real sshd
(orchestrator.guest.libvirt.sshd on 127.0.0.1): no guest, a listener that greets like sshd."""
import socket
import threading

import pytest

from orchestrator.guest.libvirt.sshd import LocalSshd
from orchestrator.guest.libvirt.tunnel import HypervisorTunnel
from orchestrator.guest.ssh import wait_for_banner
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError


@pytest.fixture
def greeter():
    """127.0.0.1:PORT that says an SSH banner to whoever connects."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-greeter\r\n")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_the_banner_comes_through_the_hypervisors_sshd(tmp_path, greeter):
    with LocalSshd(tmp_path, extra_config=("LogLevel DEBUG1",)) as hypervisor:
        tunnel = HypervisorTunnel.for_uri(hypervisor.uri)
        try:
            wait_for_banner(greeter, Deadline(10, "boot"), via=tunnel)
        finally:
            tunnel.close()
        assert tunnel.description == f"root@127.0.0.1:{hypervisor.port}" and tunnel.channels_opened == 1
    # That sshd forwarded it: the channel to the greeter is in its log.
    log = (tmp_path / "sshd.log").read_text()
    assert f"target 127.0.0.1 port {greeter}" in log, log[-2000:]


def test_a_hypervisor_that_refuses_forwarding_is_one_error_at_once(tmp_path, greeter):
    """Negative control: the same banner is not reached when the sshd does not forward."""
    with LocalSshd(tmp_path, extra_config=("AllowTcpForwarding no",)) as hypervisor:
        tunnel = HypervisorTunnel.for_uri(hypervisor.uri)
        deadline = Deadline(30, "boot")
        try:
            with pytest.raises(HarnessError, match="refuses to forward to 127.0.0.1:") as caught:
                wait_for_banner(greeter, deadline, via=tunnel)
        finally:
            tunnel.close()
        assert deadline.remaining() > 20, caught.value.message  # not waited out


def test_the_hypervisors_host_key_is_pinned(tmp_path, greeter):
    with LocalSshd(tmp_path) as hypervisor:
        other = LocalSshd(tmp_path / "other")._keygen(tmp_path / "other_host")
        hypervisor.known_hosts.write_text(f"[127.0.0.1]:{hypervisor.port} {' '.join(other.split()[:2])}\n")
        tunnel = HypervisorTunnel.for_uri(hypervisor.uri)
        try:
            with pytest.raises(HarnessError, match=f"SSH to the hypervisor root@127.0.0.1:{hypervisor.port}"):
                wait_for_banner(greeter, Deadline(10, "boot"), via=tunnel)
        finally:
            tunnel.close()
