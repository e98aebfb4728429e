"""The catalog spread over two libvirt endpoints with pytest-xdist: one JUnit
file, each test case naming the endpoint that ran it.

Both endpoints are this machine's libvirtd (no second hypervisor here), one
of them remote-style: qemu+ssh through a private sshd (orchestrator.guest.libvirt.sshd), so
everything the domain needs goes there as uploaded volumes. The second test
kills that sshd with its sessions while the endpoint runs a scenario.
"""
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from orchestrator.guest.libvirt import volumes
from orchestrator.guest.libvirt.daemons import LibvirtdError, ensure_running
from orchestrator.guest.libvirt.sshd import LocalSshd

from .conftest import REPO
from .test_libvirt import our_domains
from .test_remote_libvirt import pool_volumes

LOCAL = "qemu:///system"


@pytest.fixture
def ssh_endpoint(tmp_path):
    try:
        ensure_running()
    except LibvirtdError as exc:
        pytest.fail(f"libvirtd is needed for this test: {exc}")
    with LocalSshd(tmp_path / "sshd") as server:
        yield server


def fan_out(hosts: list[str], scenarios: list[str], tmp_path) -> tuple[list[str], object]:
    """The pytest command of a fan-out run (xdist gwN bound to hosts[N]) and its JUnit path."""
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("# one libvirt URI per line\n" + "\n".join(hosts) + "\n")
    junit = tmp_path / "junit.xml"
    # faulthandler: a scenario that hangs shows where, instead of only timing out.
    return ([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "faulthandler_timeout=240",
             "-n", str(len(hosts)), "--snapshot",
             "--kernels", "debian-6.1", "--hosts", str(hosts_file), f"--junitxml={junit}",
             "-k", " or ".join(scenarios), "scenarios"], junit)


def cases(junit) -> dict[str, dict]:
    """test case name -> host, outcome (PASS or the failure/error text), artifacts."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        found[case.get("name")] = {"host": props["host"], "artifacts": props.get("artifacts"),
                                   "outcome": "PASS" if bad is None else f"{bad.get('message', '')}\n{bad.text or ''}"}
    return found


def domains_of(ran: dict[str, dict]) -> set[str]:
    """The domains those test cases defined (named in their domain.xml)."""
    names = set()
    for case in ran.values():
        try:
            names.add(ET.parse(f"{case['artifacts']}/domain.xml").getroot().findtext("name"))
        except (OSError, ET.ParseError, TypeError):
            pass  # never defined: nothing to leave behind
    return names


def per_run_volumes() -> set[str]:
    return {v for v in pool_volumes() if volumes.ours(v) and volumes.image_volume_size(v) is None}


def test_two_endpoints_one_junit_host_per_case(ssh_endpoint, tmp_path):
    hosts = [LOCAL, ssh_endpoint.uri]
    command, junit = fan_out(hosts, ["srao-anon-late-kill", "srao-anon-early-kill"], tmp_path)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ran = cases(junit)
    assert set(ran) == {"srao-anon-late-kill[debian-6.1]", "srao-anon-early-kill[debian-6.1]"}
    # Two workers, one per endpoint: each endpoint ran one of the two.
    assert sorted(c["host"] for c in ran.values()) == sorted(hosts), ran
    assert domains_of(ran) and domains_of(ran) & set(our_domains()) == set()


def test_an_endpoint_that_dies_mid_run_errors_its_unfinished_cases_only(ssh_endpoint, tmp_path):
    scenarios = ["srao-anon-late-kill", "srao-anon-early-kill", "srar-anon-access", "free-page", "mlock-page",
                 "shmem-page"]
    volumes_before = per_run_volumes()
    command, junit = fan_out([LOCAL, ssh_endpoint.uri], scenarios, tmp_path)
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Each scenario on the ssh endpoint opens two connections: libvirt's, then
        # the guest SSH's tunnel once its domain runs. When the third one is
        # accepted, the second scenario is starting its domain; kill the endpoint
        # (sshd and every session: the connections drop) while it boots.
        log = ssh_endpoint.folder / "sshd.log"
        end = time.monotonic() + 300
        while log.read_text(errors="replace").count("Accepted publickey") < 3:
            assert run.poll() is None and time.monotonic() < end, "the ssh endpoint never got a second scenario"
            time.sleep(0.1)
        time.sleep(2)
        ssh_endpoint.stop()
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, out[-3000:]
    ran = cases(junit)
    assert set(ran) == {f"{s}[debian-6.1]" for s in scenarios}
    on_ssh = {name: c for name, c in ran.items() if c["host"] == ssh_endpoint.uri}
    on_local = {name: c for name, c in ran.items() if c["host"] == LOCAL}
    # The other endpoint's verdicts are unaffected.
    assert on_local and all(c["outcome"] == "PASS" for c in on_local.values()), on_local
    # The dead endpoint: what it finished before stays PASS; each unfinished case
    # is an ERROR (the harness could not tell, not a FAIL) with one line that says why.
    finished = [c for c in on_ssh.values() if c["outcome"] == "PASS"]
    unfinished = [c["outcome"] for c in on_ssh.values() if c["outcome"] != "PASS"]
    assert len(finished) == 1 and unfinished, on_ssh
    for text in unfinished:
        # "ERROR name:", the reasons, "artifacts: ..." (repr_failure)
        body = text.split("\nERROR ", 1)[1].splitlines()[1:]
        reasons = [line for line in body if line and not line.startswith("artifacts:")]
        assert len(reasons) == 1, text
        assert (f"cannot connect to libvirt" in reasons[0]
                or f"lost the connection to {ssh_endpoint.uri}" in reasons[0]), reasons[0]
    # The one that was running when the endpoint died went with its connection.
    assert any(f"lost the connection to {ssh_endpoint.uri}" in text for text in unfinished), unfinished
    # Nothing left on either endpoint (the same daemon here): no domain, no per-run volume.
    assert domains_of(ran) and domains_of(ran) & set(our_domains()) == set()
    assert per_run_volumes() - volumes_before == set()


def test_a_dead_endpoint_errors_its_own_cases_only(tmp_path):
    """An endpoint dead from the start: each of its cases is one ERROR line, the other's pass."""
    ensure_running()
    dead = "qemu+unix:///system?socket=/run/libvirt/no-such-sock"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{LOCAL}\n{dead}\n")
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--snapshot",
                           "--kernels", "debian-6.1", "--hosts", str(hosts), f"--junitxml={junit}",
                           "-k", "srao-anon-late-kill or srao-anon-early-kill", "scenarios"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:]
    outcome = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        host = {p.get("name"): p.get("value") for p in case.iter("property")}["host"]
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcome[host] = "PASS" if bad is None else f"{bad.get('message', '')}\n{bad.text or ''}"
    assert outcome[LOCAL] == "PASS", outcome
    # One clear line: the endpoint and why, reported as an ERROR (the harness), not a FAIL.
    assert "ERROR srao-anon-" in outcome[dead] and f"--connect {dead}: cannot connect to libvirt" in outcome[dead]
