"""Pure parts of the libvirt backend (no libvirtd needed)."""
from orchestrator.guest import libvirt as backend


def test_domain_names_are_recognisable_and_unique():
    a, b = backend.domain_name(), backend.domain_name()
    assert a != b and a.startswith("mce-orch-")
    assert backend.domain_name(pid=42, n=7).endswith(f"-42-{backend.RUN_ID}-7")


def test_the_same_hostname_and_pid_in_another_pid_namespace_is_another_name():
    # Two containers sharing one libvirtd, both orchestrators pid 1: their names still differ.
    import subprocess
    import sys
    other = subprocess.run([sys.executable, "-c", "from orchestrator.guest import libvirt as b; "
                            "print(b.domain_name(pid=1, n=1))"], capture_output=True, text=True, check=True)
    assert other.stdout.strip() != backend.domain_name(pid=1, n=1)
    assert len(backend.RUN_ID) == 8 and int(backend.RUN_ID, 16) >= 0


def test_no_run_reaps_domains_by_hostname_and_pid():
    # Autodestroy takes a dead run's domains; a name whose pid is not alive here may be another
    # PID namespace's live guest.
    import inspect
    launch = inspect.getsource(backend.LibvirtGuest.launch) + inspect.getsource(backend.LibvirtGuest._start)
    assert "VIR_DOMAIN_START_AUTODESTROY" in launch
    assert "reap_leftovers" not in launch and not hasattr(backend, "reap_leftovers")


def test_orphaned_domains_are_ours_on_this_host_with_a_dead_orchestrator():
    names = ["mce-orch-h1-100-0a1b2c3d-1", "mce-orch-h1-200-0a1b2c3d-3", "mce-orch-h2-100-0a1b2c3d-1",
             "mce-orch-h1-100-x", "someone-elses-vm", "mce-orch-h1-300-ffffffff-2"]
    alive = {200}.__contains__
    assert backend.orphaned(names, "h1", alive) == ["mce-orch-h1-100-0a1b2c3d-1", "mce-orch-h1-300-ffffffff-2"]
    assert backend.orphaned(names, "h1", lambda pid: True) == []


import pytest  # noqa: E402

from orchestrator.plumbing.outcome import InputError  # noqa: E402

GOOD = "ssh_host: 10.0.0.5\nssh_port: 22\nssh_key: keys/id\nssh_host_key: 'ssh-ed25519 AAAAC3Nz'\n"


def test_attach_config_loads_with_a_key_relative_to_the_file(tmp_path):
    path = tmp_path / "guest.yaml"
    path.write_text(GOOD)
    config = backend.load_attach_config(path)
    assert (config.ssh_host, config.ssh_port, config.ssh_user) == ("10.0.0.5", 22, "root")
    assert config.ssh_key == tmp_path / "keys" / "id"


@pytest.mark.parametrize("text, message", [
    (GOOD + "ssh_pass: x\n", "ssh_pass: unknown key"),
    (GOOD.replace("ssh_port: 22", "ssh_port: '22'"), "ssh_port: expected int"),
    (GOOD.replace("ssh_host: 10.0.0.5\n", ""), "missing ssh_host"),
    (GOOD.replace("'ssh-ed25519 AAAAC3Nz'", "AAAAC3Nz"), "ssh_host_key: expected 'TYPE BASE64'"),
    ("- a\n", "expected a mapping"),
])
def test_attach_config_mistakes_are_one_line(tmp_path, text, message):
    path = tmp_path / "guest.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as exc:
        backend.load_attach_config(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


import json  # noqa: E402

from orchestrator.guest import monitor as qmp  # noqa: E402


def libvirt_event(mon, name, data=None):
    """As libvirt's event loop calls the monitor's qemuMonitorEventRegister callback."""
    mon._on_event(None, None, name, 1700000000, 0, json.dumps(data) if data is not None else None, None)


def test_libvirt_events_are_bounded_and_a_storm_named_as_on_qmp(tmp_path):
    mon = backend.LibvirtMonitor(None, None, tmp_path / "events.jsonl", tmp_path / "commands.log")
    for _ in range(20 * qmp.STORM_EVENTS_PER_S):  # well within a second: a storm
        libvirt_event(mon, "GUEST_CRASHLOADED", {"action": "run"})
    libvirt_event(mon, "MEMORY_FAILURE", {"recipient": "guest", "action": "inject"})
    assert mon.storm and mon.storm.startswith("event storm") and "GUEST_CRASHLOADED" in mon.storm
    assert mon.counts["GUEST_CRASHLOADED"] == 20 * qmp.STORM_EVENTS_PER_S
    assert len(mon.events()) <= qmp.EVENTS_KEPT + qmp.EVENTS_TAIL + 1
    # What matters is kept whole, whenever it came.
    failure = mon.wait_for_event({"MEMORY_FAILURE"}, 0)
    assert failure and failure["data"] == {"recipient": "guest", "action": "inject"}
    assert mon.seen("MEMORY_FAILURE")
    assert "not kept" in mon.summary() and mon.dropped() > 0
    mon.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) <= qmp.EVENTS_KEPT + qmp.EVENTS_TAIL + 2
    assert any('"mce-orchestrator: events not kept"' in line for line in lines)


def test_a_handful_of_libvirt_events_is_no_storm_and_all_kept(tmp_path):
    mon = backend.LibvirtMonitor(None, None, tmp_path / "events.jsonl", tmp_path / "commands.log")
    for name in ("RESUME", "MEMORY_FAILURE", "STOP", "RESUME"):
        libvirt_event(mon, name, {})
    libvirt_event(mon, "SHUTDOWN")  # libvirt passes no details for an event without data
    assert mon.storm is None and mon.dropped() == 0
    assert [e["event"] for e in mon.events()] == ["RESUME", "MEMORY_FAILURE", "STOP", "RESUME", "SHUTDOWN"]
    assert mon.events()[-1]["data"] == {}
    assert mon.summary() == "2 RESUME, 1 MEMORY_FAILURE, 1 STOP, 1 SHUTDOWN"
    mon.close()
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 5


class _DeadConnection:
    """A remote connection whose end libvirt's event loop has not seen yet: isAlive()
    still says 1, a call fails (or, `calls_work`, a live one whose domain stopped)."""

    def __init__(self, calls_work: bool):
        self.calls_work = calls_work

    def isAlive(self):
        return 1

    def getLibVersion(self):
        import libvirt
        if not self.calls_work:
            raise libvirt.libvirtError("End of file while reading data")
        return 9000000


class _Domain:
    def __init__(self, conn):
        self.conn = conn

    def isActive(self):
        import libvirt
        if not self.conn.calls_work:
            raise libvirt.libvirtError("End of file while reading data")
        return 0


@pytest.mark.parametrize("calls_work, said", [(False, "gone: lost the connection to qemu+ssh://hv/system (closed;"),
                                              (True, "not running")])
def test_a_domain_call_that_sees_the_connection_end_names_it(calls_work, said):
    from orchestrator.guest.libvirt import LibvirtGuest
    guest = LibvirtGuest.__new__(LibvirtGuest)
    guest.uri, guest._lost, guest._lifecycle, guest.ssh_via = "qemu+ssh://hv/system", None, [], None
    guest._conn = _DeadConnection(calls_work)
    guest._dom = _Domain(guest._conn)
    assert guest._stopped_reason().startswith(said)


@pytest.mark.parametrize("calls_work, said", [
    (False, "lost the connection to qemu+ssh://hv/system (closed) while starting domain d: libvirt monitor"),
    (True, "domain d: libvirt monitor command"),  # the control: a live connection, the monitor's own error
])
def test_a_monitor_command_the_dropped_connection_broke_names_the_connection(monkeypatch, calls_work, said):
    """CI under load: the endpoint died while the domain started, and query-cpus-fast failed
    with 'End of file while reading data' (a MonitorError, not a libvirtError)."""
    from orchestrator.guest import libvirt as lv
    from orchestrator.guest.monitor import MonitorError
    from orchestrator.plumbing.deadline import Deadline
    from orchestrator.plumbing.outcome import HarnessError
    guest = lv.LibvirtGuest.__new__(lv.LibvirtGuest)
    guest.uri, guest._lost, guest._lifecycle, guest.ssh_via, guest.remote = "qemu+ssh://hv/system", None, [], None, False
    guest.name, guest.incoming = "d", None
    conn = _DeadConnection(calls_work)
    conn.registerCloseCallback = lambda *a: None
    monkeypatch.setattr(lv, "open_connection", lambda uri: conn)
    monkeypatch.setattr(lv.LibvirtGuest, "_start", lambda self, libvirt: None)

    def read_limits(self):
        raise MonitorError("libvirt monitor command '{\"execute\": \"query-cpus-fast\"}': End of file while "
                           "reading data: Input/output error")

    monkeypatch.setattr(lv.LibvirtGuest, "read_limits", read_limits)
    monkeypatch.setattr(lv.LibvirtGuest, "shutdown", lambda self, timeout=5: None)
    with pytest.raises(HarnessError) as raised:
        guest.launch(Deadline(5, "boot"))
    assert raised.value.phase == "boot" and raised.value.message.startswith(said), raised.value.message
