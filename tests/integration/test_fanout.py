"""The catalog spread over two libvirt endpoints with pytest-xdist: one JUnit
file, each test case naming the endpoint that ran it.

Both endpoints are this machine's libvirtd (no second hypervisor here): the
default URI and the same daemon through an explicit socket path."""
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from orchestrator.libvirtd import LibvirtdError, ensure_running

from .conftest import REPO

HOSTS = ["qemu:///system", "qemu+unix:///system?socket=/run/libvirt/libvirt-sock"]


def test_two_endpoints_one_junit_host_per_case(tmp_path):
    try:
        ensure_running()
    except LibvirtdError as exc:
        pytest.fail(f"libvirtd is needed for this test: {exc}")
    hosts = tmp_path / "hosts"
    hosts.write_text("# two endpoints\n" + "\n".join(HOSTS) + "\n")
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--snapshot",
                           "--kernels", "debian-6.1", "--hosts", str(hosts), f"--junitxml={junit}",
                           "-k", "srao-anon-late-kill or srao-anon-early-kill", "scenarios"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    cases = ET.parse(junit).getroot().iter("testcase")
    ran_on = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}["host"]
              for case in cases}
    assert set(ran_on) == {"srao-anon-late-kill[debian-6.1]", "srao-anon-early-kill[debian-6.1]"}
    # Two workers, one per endpoint: each endpoint ran one of the two.
    assert sorted(ran_on.values()) == sorted(HOSTS), ran_on


def test_a_dead_endpoint_errors_its_own_cases_only(tmp_path):
    ensure_running()
    dead = "qemu+unix:///system?socket=/run/libvirt/no-such-sock"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{HOSTS[0]}\n{dead}\n")
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
    assert outcome[HOSTS[0]] == "PASS", outcome
    # One clear line: the endpoint and why, reported as an ERROR (the harness), not a FAIL.
    assert "ERROR srao-anon-" in outcome[dead] and f"--connect {dead}: cannot connect to libvirt" in outcome[dead]
