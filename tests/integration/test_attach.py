"""--domain: scenarios inside a running libvirt domain the user already has.

The "user's" domain is a persistent one defined here (our image, a pty serial
console, SSH forwarded the way a user might: hostfwd_add); the orchestrator
must leave it running and defined, and refuse what it cannot do in one line."""
import json
import os
import xml.etree.ElementTree as ET

import pytest

from orchestrator.guest.images import ensure_image
from orchestrator.guest.libvirt import xml as libvirt_xml
from orchestrator.guest.libvirt.daemons import ensure_running
from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.guest.qemu import free_loopback_port
from orchestrator.guest.ssh import wait_for_banner
from orchestrator.plumbing.deadline import Deadline

from .conftest import REPO, orchestrator

NAME = f"mceuser-test-{os.getpid()}"


@pytest.fixture(scope="module")
def user_domain(tmp_path_factory):
    import libvirt
    import libvirt_qemu
    ensure_running()
    image = ensure_image("debian-6.1", repo_root=REPO)
    folder = tmp_path_factory.mktemp("user-domain")
    root = ET.fromstring(libvirt_xml.build_domain_xml(libvirt_xml.DomainConfig(
        name=NAME, kernel=image.kernel, initrd=image.initrd, console_log=folder / "unused.log", vcpus=2,
        firmware=qemu_args.default_firmware())))
    serial = root.find("devices/serial")
    serial.set("type", "pty")
    serial.remove(serial.find("source"))
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
    try:
        dom.create()
        port = free_loopback_port()
        libvirt_qemu.qemuMonitorCommand(dom, libvirt_xml.hostfwd_command(port),
                                        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        wait_for_banner(port, Deadline(180, "boot"))
        config = folder / "guest.yaml"
        config.write_text(f"ssh_host: 127.0.0.1\nssh_port: {port}\nssh_key: {image.client_key}\n"
                          f"ssh_host_key: '{image.host_key_line}'\n")
        yield dom, config
    finally:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
        dom.undefine()
        conn.close()


def test_scenarios_run_in_the_users_domain_and_leave_it_running(user_domain, tmp_path):
    dom, config = user_domain
    # broadcast-srao-smp2 is written for a 2-vCPU guest, as this domain is. --image names
    # another kernel than the domain runs (6.1): the guest's own is judged and reported.
    proc = orchestrator("run", "broadcast-srao-smp2", "corrected-errors-one-page", "--domain", NAME,
                        "--guest-config", str(config), "--image", "debian-6.12", results=tmp_path)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    outcomes = {s["name"]: (s["outcome"], s.get("error")) for s in report["scenarios"]}
    assert proc.returncode == 0, (outcomes, proc.stderr[-2000:])
    assert {s["kernel_release"] for s in report["scenarios"]} == {ensure_image("debian-6.1", repo_root=REPO).kernel_release}
    commands = (tmp_path / "latest" / "broadcast-srao-smp2" / "monitor-commands.log").read_text()
    assert "hmp mce -b " in commands
    # The console came through libvirt's console stream: the kernel's own lines are in it.
    assert "Memory failure:" in (tmp_path / "latest" / "broadcast-srao-smp2" / "console.log").read_text()
    assert dom.isActive() and dom.isPersistent() and dom.name() == NAME  # left as it was: running, defined


@pytest.mark.parametrize("arguments, message", [
    (["srao-anon-late-kill", "--domain", "no-such-domain-here"], "--domain no-such-domain-here: "),
    (["srar-each-vcpu-smp4", "--domain", NAME], "srar-each-vcpu-smp4.yaml: guest: needs 4 vCPUs (the domain has 2)"),
    # A 1-vCPU scenario's SRAO without broadcast would panic a 2-vCPU guest (the rendezvous).
    (["srao-anon-late-kill", "--domain", NAME], "srao-anon-late-kill.yaml: guest: needs exactly 1 vCPU(s) for an "
                                                "uncorrected error without broadcast (the domain has 2)"),
    (["file-dirty-ext4", "--domain", NAME], "and a scratch disk as /dev/vda"),
    (["broadcast-srao-smp2", "--domain", NAME, "--snapshot"], "--snapshot restores guests of our own"),
])
def test_what_an_attached_domain_cannot_do_is_one_line(user_domain, tmp_path, arguments, message):
    dom, config = user_domain
    proc = orchestrator("run", *arguments, "--guest-config", str(config), results=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "latest").exists()
    assert dom.isActive()


def test_a_domain_without_ssh_is_one_line(user_domain, tmp_path):
    dom, config = user_domain
    no_ssh = tmp_path / "no-ssh.yaml"
    no_ssh.write_text(config.read_text().replace("ssh_port:", "ssh_port: 1 #"))
    proc = orchestrator("run", "broadcast-srao-smp2", "--domain", NAME, "--guest-config", str(no_ssh),
                        results=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--domain {NAME}: no SSH banner on 127.0.0.1:1" in lines[0], proc.stderr
