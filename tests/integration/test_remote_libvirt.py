"""The libvirt backend on a remote-style endpoint: this machine's libvirtd through
a private sshd (qemu+ssh://root@127.0.0.1:PORT/system, host key pinned). What the
domain needs reaches that host only through libvirt: storage volumes filled by
upload streams, the console through a libvirt stream.
"""
import json
import xml.etree.ElementTree as ET
import os
import re
import subprocess

import pytest

from orchestrator.guest import images
from orchestrator.guest.libvirt import volumes
from orchestrator.guest.libvirt.daemons import LibvirtdError, ensure_running
from orchestrator.guest.libvirt.sshd import LocalSshd
from orchestrator.runner import REPO_ROOT

from .conftest import orchestrator
from .test_libvirt import our_domains

SCENARIOS = ("file-dirty-ext4", "srao-anon-late-kill")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    try:
        ensure_running()
    except LibvirtdError as exc:
        pytest.fail(f"libvirtd is needed for these tests: {exc}")
    # DEBUG1: sshd logs each direct-tcpip channel it opens (the guest SSH's tunnel).
    with LocalSshd(tmp_path_factory.mktemp("sshd"), extra_config=("LogLevel DEBUG1",)) as server:
        yield server


def pool_volumes() -> set[str]:
    import libvirt
    conn = libvirt.open("qemu:///system")
    try:
        return set(volumes.VolumeStore(conn).names())
    finally:
        conn.close()


def cached_image_volumes() -> dict[str, str]:
    image = images.ensure_image("debian-6.1", repo_root=REPO_ROOT, cache_root=REPO_ROOT / "guest-images" / ".cache")
    return {p.name: volumes.image_volume_name(volumes.content_digest(p), p.stat().st_size, p.name)
            for p in (image.kernel, image.initrd)}


@pytest.fixture(scope="module")
def remote_run(endpoint, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    domains_before = set(our_domains())
    # --snapshot: a remote guest cannot be saved (its state file would be an fd
    # handed over a local socket), so both boot: the option must not break them.
    proc = orchestrator("run", *SCENARIOS, "--backend", "libvirt", "--connect", endpoint.uri, "--snapshot",
                        results=results)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, {s["name"]: s for s in report["scenarios"]}, results / "latest", domains_before


def test_scenarios_pass_through_volumes_on_a_remote_endpoint(remote_run):
    proc, scenarios, latest, _ = remote_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    cached = cached_image_volumes()
    for name in SCENARIOS:
        assert scenarios[name]["outcome"] == "PASS", scenarios[name]
        xml = (latest / name / "domain.xml").read_text()
        # The domain boots what the volumes hold, not this machine's cache files.
        for volume in cached.values():
            assert f"<{'kernel' if 'initrd' not in volume else 'initrd'}>{volumes.POOL_PATH}/{volume}<" in xml
        assert str(REPO_ROOT) not in xml and 'serial type="pty"' in xml
        # The console came through libvirt's stream up to the probe's result.
        assert "MCEORCH-READY" in (latest / name / "console.log").read_text(errors="replace")
        assert "migrate-incoming" not in (latest / name / "monitor-commands.log").read_text()
    assert f"{volumes.POOL_PATH}/mce-orch-" in (latest / "file-dirty-ext4" / "domain.xml").read_text()


def test_the_guests_ssh_goes_through_the_hypervisors_sshd(endpoint, remote_run):
    """The guest's forward listens on the hypervisor's loopback: every connection to it
    (banner polls, the session) is a channel of an SSH connection to that host."""
    proc, _, latest, _ = remote_run
    through = f"through root@127.0.0.1:{endpoint.port}"
    ports = [int(p) for p in re.findall(rf"ssh on 127\.0\.0\.1:(\d+) {re.escape(through)}", proc.stderr)]
    assert len(ports) == len(SCENARIOS), proc.stderr[-3000:]
    hypervisor_log = (endpoint.folder / "sshd.log").read_text(errors="replace")
    for name, port in zip(SCENARIOS, ports):
        assert f"through the hypervisor root@127.0.0.1:{endpoint.port}" in (latest / name / "ssh.log").read_text()
        # That sshd opened the channels to the guest's forwarded port.
        assert f"target 127.0.0.1 port {port}" in hypervisor_log, (port, hypervisor_log[-2000:])


def test_a_hypervisor_that_does_not_forward_is_one_error_line(endpoint, tmp_path):  # endpoint: libvirtd runs
    """Negative control: libvirt works over this sshd but it refuses TCP forwarding, so
    the guest's SSH (which only the tunnel reaches) fails at once, as an ERROR, and
    the domain goes."""
    with LocalSshd(tmp_path / "sshd", extra_config=("AllowTcpForwarding no",)) as server:
        proc = orchestrator("run", "srao-anon-late-kill", "--backend", "libvirt", "--connect", server.uri,
                            results=tmp_path / "results")
    assert proc.returncode == 2, proc.stdout[-2000:]
    (scenario,) = json.loads((tmp_path / "results" / "latest" / "report.json").read_text())["scenarios"]
    assert scenario["outcome"] == "ERROR"
    error = scenario["error"]["message"]
    assert "\n" not in error and f"root@127.0.0.1:{server.port} refuses to forward to 127.0.0.1:" in error, error
    assert "Secsh channel" not in proc.stdout + proc.stderr  # paramiko's own log stays off the terminal
    ran = ET.parse(tmp_path / "results" / "latest" / "srao-anon-late-kill" / "domain.xml").getroot().findtext("name")
    assert ran not in our_domains()  # the domain had started: it is gone


def test_nothing_of_the_run_is_left_on_the_host_but_cached_files(remote_run):
    _, _, latest, _ = remote_run
    # Its domains by name (other people's runs may have domains of their own meanwhile).
    ran = {ET.parse(latest / name / "domain.xml").getroot().findtext("name") for name in SCENARIOS}
    assert len(ran) == 2 and ran & set(our_domains()) == set()
    left = {v for v in pool_volumes() if volumes.ours(v)}
    per_run = {v for v in left if volumes.image_volume_size(v) is None}
    assert per_run == set(), per_run  # scratch disk and partial uploads gone
    assert set(cached_image_volumes().values()) <= left


def test_a_second_run_uploads_nothing(endpoint, remote_run):
    """Content-addressed: the cached volumes' files are not written again."""
    import libvirt
    cached = cached_image_volumes()
    paths = [f"{volumes.POOL_PATH}/{v}" for v in cached.values()]
    before = [os.stat(p).st_mtime_ns for p in paths]
    conn = libvirt.open(endpoint.uri)
    try:
        store = volumes.VolumeStore(conn)
        image = images.ensure_image("debian-6.1", repo_root=REPO_ROOT,
                                    cache_root=REPO_ROOT / "guest-images" / ".cache")
        assert [store.cached(p, "test") for p in (image.kernel, image.initrd)] == paths
    finally:
        conn.close()
    assert [os.stat(p).st_mtime_ns for p in paths] == before


def test_the_host_key_is_pinned(endpoint, tmp_path):
    """Negative control: the same server with another pinned key is refused."""
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{endpoint.port} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    wrapper = tmp_path / "ssh"
    wrapper.write_text(endpoint.wrapper.read_text().replace(str(endpoint.known_hosts), str(known)))
    wrapper.chmod(0o700)
    uri = endpoint.uri.replace(f"command={endpoint.wrapper}", f"command={wrapper}")
    proc = orchestrator("run", "srao-anon-late-kill", "--backend", "libvirt", "--connect", uri, results=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "cannot connect to libvirt" in lines[0] and "host key" in lines[0].lower(), lines[0]


@pytest.mark.parametrize("what", ["unreachable ssh endpoint", "libvirtd down behind ssh"])
def test_endpoint_errors_are_one_line(endpoint, tmp_path, what):
    if what == "unreachable ssh endpoint":
        with LocalSshd(tmp_path / "gone") as gone:
            uri = gone.uri  # a real endpoint, then nobody listens on its port
    else:
        uri = endpoint.uri + "&socket=/run/libvirt/no-such-sock"
    proc = orchestrator("run", "srao-anon-late-kill", "--backend", "libvirt", "--connect", uri, results=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mce-orchestrator: error: --connect {uri}: cannot connect to libvirt: "), lines[0]
    assert not (tmp_path / "latest").exists()  # refused before any run started


def test_a_volume_the_host_cannot_store_is_one_error_line_and_leaves_nothing(endpoint, tmp_path):
    """Something else occupies the initramfs's volume name on the host (a directory
    libvirt cannot delete): the upload cannot be stored under its name."""
    import libvirt
    name = cached_image_volumes()["initrd.img"]
    conn = libvirt.open("qemu:///system")
    store = volumes.VolumeStore(conn)
    store.delete(name)
    blocker = f"{volumes.POOL_PATH}/{name}"
    os.makedirs(f"{blocker}/occupied")
    try:
        store.pool.refresh(0)
        before_volumes = pool_volumes()
        proc = orchestrator("run", "srao-anon-late-kill", "--backend", "libvirt", "--connect", endpoint.uri,
                            results=tmp_path)
        assert proc.returncode == 2, proc.stdout[-2000:]
        report = json.loads((tmp_path / "latest" / "report.json").read_text())
        (scenario,) = report["scenarios"]
        assert scenario["outcome"] == "ERROR"
        error = scenario["error"]["message"]
        assert "\n" not in error and f"cannot store initrd.img as volume {name}" in error, error
        assert not (tmp_path / "latest" / "srao-anon-late-kill" / "domain.xml").exists()  # never defined
        assert pool_volumes() == before_volumes  # the partial upload is gone too
    finally:
        os.rmdir(f"{blocker}/occupied")
        os.rmdir(blocker)
        store.pool.refresh(0)
        conn.close()
