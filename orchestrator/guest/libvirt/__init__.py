"""A guest run by libvirt: a transient domain from generated XML, driven through
libvirt-python only.

- The domain is created paused, so QEMU's memory map is read and the SSH
  forward added before the guest runs; then it is resumed.
- SSH: user networking (the same network the QEMU backend's guest has) with
  a forward from 127.0.0.1 only, added with HMP `hostfwd_add` through
  libvirt's monitor passthrough: Debian 12's libvirt 9.0 has no
  <portForward> without passt, and a private libvirt network would put the
  guest on a host bridge (reachable beyond loopback) and need its own
  addressing; this keeps the guest's static 10.0.2.15 and loopback-only SSH.
- `mce`, the SRAR gate's stop/info registers/cont: libvirt_qemu.qemuMonitorCommand.
- QEMU's own events (MEMORY_FAILURE, GUEST_PANICKED, SHUTDOWN, RESET, ...) come
  through libvirt_qemu.qemuMonitorEventRegister, recorded in the same shape
  as the QMP monitor's; the domain's lifecycle (stopped, crashed) through
  libvirt's event loop. Both are dispatched by one process-wide
  virEventRunDefaultImpl thread.
- Names are `mce-orch-<host>-<pid>-<run id>-<n>`, the run id random per
  process: two orchestrators with the same hostname and pid (containers in
  other PID namespaces sharing one libvirtd) never take each other's names.
  shutdown() destroys the domain whatever happened, and domains are started
  with libvirt's autodestroy: when the connection that created one closes (an
  orchestrator killed with SIGKILL, a dead endpoint), libvirtd destroys it.
  So no run reaps domains: a domain whose owner looks gone by hostname and pid
  may well be another container's live guest.
- A remote URI (qemu+ssh://...): the kernel, initramfs and scratch disk go to
  that host as storage volumes through libvirt's upload streams
  (orchestrator.guest.libvirt.volumes), the console is a pty read through a libvirt
  stream, and --snapshot boots cold (QEMU's state file is handed over as an
  fd, which only a local connection can carry).
  The guest's SSH forward listens on that host's loopback: on an SSH URI it
  is reached through that host's sshd (orchestrator.guest.libvirt.tunnel).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import secrets
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.guest.base import Guest, HypervisorUnavailable
from orchestrator.guest.images import GuestImage
from orchestrator.guest.libvirt import tunnel as hypervisor_ssh, volumes as libvirt_volumes, xml as libvirt_xml
from orchestrator.guest.libvirt.connection import DEFAULT_URI, _libvirt, _message, open_connection
from orchestrator.guest.monitor import BoundedEvents, MonitorError, MonitorLogs
from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.guest.qemu import file_digest, free_loopback_port, qemu_build
from orchestrator.guest.qemu.install import firmware_layout
from orchestrator.guest.ssh import wait_for_banner
from orchestrator.inject import mce
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError, InputError
from orchestrator.scenario import GuestSpec

CATCH_UP_QUIET_S = 0.25  # after a storm: no event for this long, libvirt has delivered what it had
PORT_ATTEMPTS = 3
_counter = itertools.count(1)


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()).strip("-")[:40] or "host"


# This process's run id: random, so names from another PID namespace (same hostname, same pid)
# never collide with ours. Kept in every domain and per-run volume name.
RUN_ID = secrets.token_hex(4)


def domain_name(pid: int | None = None, n: int | None = None, run_id: str | None = None) -> str:
    return (f"{libvirt_xml.DOMAIN_PREFIX}{_host_tag()}-{pid or os.getpid()}-{run_id or RUN_ID}-"
            f"{n if n is not None else next(_counter)}")


def orphaned(names, host: str, alive) -> list[str]:
    """Our domains on this host whose orchestrator process `alive(pid)` says is gone. Pure.
    Only for a look from inside one PID namespace (the tests' leftover check): the backend
    reaps nothing by it, autodestroy takes a dead run's domains."""
    prefix = f"{libvirt_xml.DOMAIN_PREFIX}{host}-"
    found = []
    for name in names:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)-[0-9a-f]+-\d+", name)
        if m and not alive(int(m.group(1))):
            found.append(name)
    return found


def _paths_in_use(conn) -> set[str]:
    """Every file path the running domains of `conn` name (disks, kernels, initrds): a volume
    one of them uses is not a leftover, whoever started it."""
    libvirt, _ = _libvirt()
    used: set[str] = set()
    for dom in conn.listAllDomains():
        try:
            root = ET.fromstring(dom.XMLDesc(0))
        except (libvirt.libvirtError, ET.ParseError):
            continue
        for element in root.iter():
            for key in ("file", "path", "dev"):
                if element.get(key):
                    used.add(element.get(key))
            if element.tag in ("kernel", "initrd") and element.text:
                used.add(element.text.strip())
    return used


class LibvirtMonitor(MonitorLogs, BoundedEvents):
    """The GuestMonitor interface over libvirt's QEMU monitor passthrough. QEMU's
    events are recorded, bounded and a storm named, as the QMP monitor's are."""

    def __init__(self, conn, dom, event_log: Path, command_log: Path):
        self._conn = conn
        self._dom = dom
        self._event_log = event_log.open("a", buffering=1)
        self._command_log = command_log.open("a", buffering=1)
        self._init_events()
        self._t0 = time.monotonic()
        self._callback_id: int | None = None
        self.log_error: str | None = None

    def register(self) -> None:
        _, libvirt_qemu = _libvirt()
        self._callback_id = libvirt_qemu.qemuMonitorEventRegister(self._conn, self._dom, None, self._on_event, None, 0)

    def _on_event(self, conn, dom, event, seconds, micros, details, opaque) -> None:
        record = self._record(event, lambda: {"event": event, "data": json.loads(details) if details else {},
                                              "timestamp": {"seconds": seconds, "microseconds": micros}},
                              time.monotonic())
        if record is not None:
            self._write(self._event_log, json.dumps(record) + "\n")

    def close(self) -> None:
        if self._callback_id is not None:
            _, libvirt_qemu = _libvirt()
            try:
                libvirt_qemu.qemuMonitorEventDeregister(self._conn, self._callback_id)
            except Exception:  # noqa: BLE001 -- closing must never raise
                pass
            self._callback_id = None
        # Objects of a connection keep it open (a remote one: an ssh process each) until they go.
        self._dom = self._conn = None
        self._log_not_kept()
        for log in (self._event_log, self._command_log):
            try:
                log.close()
            except OSError as exc:
                self.log_error = self.log_error or f"{exc.strerror}: {log.name}"

    # --- commands ---
    def _passthrough(self, text: str, hmp: bool) -> str:
        libvirt, libvirt_qemu = _libvirt()
        flags = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP if hmp else 0
        if self._dom is None:
            raise MonitorError(f"libvirt monitor command {text!r}: the monitor is closed")
        try:
            return libvirt_qemu.qemuMonitorCommand(self._dom, text, flags)
        except libvirt.libvirtError as exc:
            raise MonitorError(f"libvirt monitor command {text!r}: {_message(exc)}") from None

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 10) -> object:
        self._log_command(command if arguments is None else f"{command} {json.dumps(arguments)}")
        request = {"execute": command} | ({"arguments": arguments} if arguments is not None else {})
        reply = json.loads(self._passthrough(json.dumps(request), hmp=False))
        if "error" in reply:
            raise MonitorError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def hmp_query(self, line: str, timeout: float = 10, cpu: int | None = None) -> str:
        if cpu is not None:
            # libvirt's HMP mode has no vCPU argument; QMP's human-monitor-command has.
            reply = self.execute("human-monitor-command", {"command-line": line, "cpu-index": cpu}, timeout)
            assert isinstance(reply, str)
            return reply
        self._log_command(f"hmp {line}")
        return self._passthrough(line, hmp=True)

    # --- events ---
    def read_to_end(self, timeout: float) -> None:
        """Nothing to wait for here that the QMP monitor's reader waits for: libvirt holds
        the monitor, and its events reach us through its event loop, not a socket of ours."""

    def catch_up(self, timeout: float) -> bool:
        """After a storm: stop the guest (no more events), then read what libvirt still
        queues for us. libvirt dispatches events apart from command replies, so the
        reply to a command sent now is not enough: until none came for CATCH_UP_QUIET_S.
        False if that took longer than `timeout`."""
        end = time.monotonic() + timeout
        with contextlib.suppress(MonitorError):
            self.hmp("stop", timeout=min(timeout, 2))
        try:
            self.execute("query-status", timeout=timeout)
        except MonitorError:
            return False
        with self._changed:
            while True:
                count = sum(self.counts.values())
                quiet_until = time.monotonic() + CATCH_UP_QUIET_S
                if quiet_until > end:
                    return False
                self._changed.wait_for(lambda: sum(self.counts.values()) != count, CATCH_UP_QUIET_S)
                if sum(self.counts.values()) == count:
                    return True


class LibvirtGuest(Guest):
    def __init__(self, *, image: GuestImage, spec: GuestSpec, artifacts: Path, accel: str | None = None,
                 qemu_binary: str = "qemu-system-x86_64", extra_cmdline: str = "", disk: Path | None = None,
                 incoming: Path | None = None, connect: str | None = None):
        super().__init__(image=image, spec=spec, artifacts=artifacts, accel=accel, qemu_binary=qemu_binary,
                         extra_cmdline=extra_cmdline, disk=disk, incoming=incoming)
        self.uri = connect or DEFAULT_URI
        self.remote = libvirt_volumes.is_remote(self.uri)
        self.can_snapshot = not self.remote
        # The SSH forward listens on that host's loopback: a qemu+ssh host is reached through its sshd.
        self.ssh_via = hypervisor_ssh.HypervisorTunnel.for_uri(self.uri)
        self._placed: dict[str, Path] = {}  # on a remote host: where its volumes hold our files
        self._run_volumes: list[str] = []
        self._volumes: libvirt_volumes.VolumeStore | None = None
        self._console: ConsoleRecorder | None = None
        self.monitor: LibvirtMonitor | None = None
        self.name = domain_name()
        self._conn = None
        self._dom = None
        self._lifecycle: list[tuple[int, int]] = []
        self._lifecycle_id: int | None = None
        self._lost: str | None = None  # why the connection closed under us (an endpoint that died)

    # --- state ---
    @property
    def pid(self) -> int | None:
        return self.launched_pid if self.is_running() else None

    def is_running(self) -> bool:
        if self._dom is None:
            return False
        libvirt, _ = _libvirt()
        try:
            return bool(self._dom.isActive())
        except libvirt.libvirtError:
            return False

    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:
        # Only how it stopped is asked; a guest's pvpanic storm is also a storm of CRASHED events.
        libvirt, _ = _libvirt()
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._lifecycle.append((event, detail))

    def _stopped_reason(self) -> str | None:
        libvirt, _ = _libvirt()
        details = {libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shut down",
                   libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
                   libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
                   libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed (QEMU exited or was killed)"}
        lost = f"gone: lost the connection to {self.uri} ({{}}; autodestroyed there)"
        if self._lost or (self._conn is not None and not self._conn_alive()):
            return lost.format(self._lost or "closed")
        for event, detail in list(self._lifecycle):
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                return details.get(detail, f"stopped (detail {detail})")
        if self._dom is not None and not self.is_running():
            # The failed call may be the first to see the connection end (before
            # libvirt's event loop and its close callback do).
            if self._lost or (self._conn is not None and not self._conn_alive(ask=True)):
                return lost.format(self._lost or "closed")
            return "not running"
        return None

    def _conn_alive(self, ask: bool = False) -> bool:
        """Is the connection up? `ask`: make a call to find out, not only look at its state."""
        libvirt, _ = _libvirt()
        try:
            if self._conn.isAlive() != 1:
                return False
            if ask or (self.ssh_via is not None and self.ssh_via.dropped):
                # The guest's tunnel through the same sshd went down, perhaps before
                # libvirt's event loop saw its own EOF: a call sees it now.
                self._conn.getLibVersion()
            return True
        except libvirt.libvirtError:
            return False

    def exit_summary(self) -> str | None:
        why = self._stopped_reason()
        return f"of domain {self.name} {why}" if why else None

    def died(self) -> str | None:
        why = self._stopped_reason()
        return f"libvirt domain {self.name} {why}; log: {self._qemu_log_tail()}" if why else None

    def _qemu_log_tail(self) -> str:
        path = Path("/var/log/libvirt/qemu") / f"{self.name}.log"
        try:
            return " | ".join(path.read_text(errors="replace").splitlines()[-3:]) or "empty"
        except OSError:
            return "not readable here"

    # --- lifecycle ---
    def launch(self, deadline: Deadline) -> None:
        try:
            libvirt, _ = _libvirt()
            self._conn = open_connection(self.uri)
        except InputError as exc:
            raise HypervisorUnavailable(str(exc)) from None
        reasons = {libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "end of file", libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
                   libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout"}
        with contextlib.suppress(libvirt.libvirtError):  # a driver without one: died() asks isAlive()
            self._conn.registerCloseCallback(lambda conn, reason, opaque: setattr(
                self, "_lost", reasons.get(reason, f"reason {reason}")), None)
        try:
            if self.remote:
                self._place_files()
            self._start(libvirt)
            if self.incoming is None:
                self.read_limits()  # paused: what the guest has, before it runs
            self._forward_ssh(deadline)
            if self.incoming is not None:
                with self.incoming.open("rb") as state:
                    self._with_file("mce-incoming", state)
                self.monitor.execute("migrate-incoming", {"uri": "fd:mce-incoming"})
            if self.incoming is None:
                self._dom.resume()
        except libvirt.libvirtError as exc:
            # The connection that dropped while the domain started is the cause, not the call it broke.
            lost = self._lost or (None if self._conn is None or self._conn_alive(ask=True) else "closed")
            self.shutdown()
            if lost:
                raise HarnessError("boot", f"lost the connection to {self.uri} ({lost}) while starting domain "
                                           f"{self.name}: {_message(exc)}") from None
            raise HarnessError("boot", f"libvirt could not start domain {self.name}: {_message(exc)} "
                                       f"(QEMU log: {self._qemu_log_tail()})") from None
        except (MonitorError, HarnessError, libvirt_volumes.VolumeError) as exc:
            # A monitor command the dropped connection broke (CI under load: query-cpus-fast
            # "End of file while reading data") is the connection's loss too.
            lost = self._lost or (None if self._conn is None or self._conn_alive(ask=True) else "closed")
            self.shutdown()
            message = exc.message if isinstance(exc, HarnessError) else str(exc)
            if lost:
                raise HarnessError("boot", f"lost the connection to {self.uri} ({lost}) while starting domain "
                                           f"{self.name}: {message}") from None
            raise HarnessError("boot", f"domain {self.name}: {message}") from None

    def _place_files(self) -> None:
        """The kernel and initramfs (cached by content) and the scratch disk (this
        run's) as volumes on the remote host; the domain XML points at them."""
        self._volumes = libvirt_volumes.VolumeStore(self._conn)
        self._volumes.reap(_paths_in_use(self._conn))
        for what, path in (("kernel", self.image.kernel), ("initrd", self.image.initrd)):
            self._placed[what] = Path(self._volumes.cached(path, RUN_ID))
        if self.disk is not None:
            name = libvirt_volumes.run_volume_name(self.name, "disk")
            self._run_volumes.append(name)
            self._placed["disk"] = Path(self._volumes.upload(self.disk, name).path())

    def _domain_xml(self) -> str:
        return libvirt_xml.build_domain_xml(self._domain_config())

    def _domain_config(self) -> libvirt_xml.DomainConfig:
        return libvirt_xml.DomainConfig(
            name=self.name, kernel=self._placed.get("kernel", self.image.kernel),
            initrd=self._placed.get("initrd", self.image.initrd), console_log=self.console_log,
            memory_mib=self.spec.memory_mib, vcpus=self.spec.vcpus, numa_nodes=self.spec.numa_nodes,
            machine=self.spec.machine, accel=self.accel, emulator=_emulator_path(self.qemu_binary), extra_cmdline=self.extra_cmdline,
            pmem_mib=self.spec.pmem_mib, firmware=firmware_layout(self.qemu_binary)[1] if self.accel == "tcg" else None,
            data_dirs=firmware_layout(self.qemu_binary)[0],
            disk=self._placed.get("disk", self.disk), console_pty=self.remote,
            incoming=self.incoming is not None,
            # A restored guest's console.log already holds the saving boot's console.
            console_append=self.incoming is not None)

    def _start(self, libvirt) -> None:
        xml = self._domain_xml()
        (self.artifacts / "domain.xml").write_text(xml)
        self._dom = self._conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY)
        if self.remote:
            self._console = ConsoleRecorder(self._conn, self._dom, self.console_log)  # paused: nothing missed
            # QEMU holds the scratch disk open: unlinked now, it goes with QEMU even
            # if this connection never comes back.
            for name in self._run_volumes:
                self._volumes.delete(name)
        self._watch(libvirt)

    def _watch(self, libvirt) -> None:
        """Lifecycle events, QEMU's pid and the monitor of the domain in self._dom."""
        self._lifecycle_id = self._conn.domainEventRegisterAny(
            self._dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            self._on_lifecycle, None)
        self.launched_pid = _domain_pid(self.name)
        self.monitor = LibvirtMonitor(self._conn, self._dom, self.artifacts / "qmp-events.jsonl",
                                      self.artifacts / "monitor-commands.log")
        self.monitor.register()

    def _forward_ssh(self, deadline: Deadline) -> None:
        """Loopback only; a port another process took in between is retried with a new one."""
        for attempt in range(PORT_ATTEMPTS):
            self.ssh_port = free_loopback_port()
            reply = self.monitor.hmp_query(libvirt_xml.hostfwd_command(self.ssh_port))
            if not reply.strip():
                return
            if attempt == PORT_ATTEMPTS - 1 or deadline.expired():
                raise HarnessError("boot", f"cannot forward 127.0.0.1:{self.ssh_port} to the guest: {reply.strip()}")

    def _with_file(self, name: str, file) -> None:
        """Hand QEMU an open file as fd `name` (local connections only: SCM_RIGHTS)."""
        libvirt, libvirt_qemu = _libvirt()
        self.monitor._log_command(f"getfd {name}")
        try:
            reply = json.loads(libvirt_qemu.qemuMonitorCommandWithFiles(
                self._dom, json.dumps({"execute": "getfd", "arguments": {"fdname": name}}), [file.fileno()], 0)[0])
        except libvirt.libvirtError as exc:
            raise MonitorError(f"passing a file to QEMU through libvirt: {_message(exc)}") from None
        if "error" in reply:
            raise MonitorError(f"QMP getfd: {reply['error'].get('desc', reply['error'])}")

    def save(self, path: Path, deadline: Deadline) -> None:
        """Stop the guest and have its QEMU write its migration stream to a file we
        opened (QEMU's sandbox under libvirt forbids exec:). The caller renames it."""
        assert self.monitor
        try:
            with path.open("wb") as out:
                self._with_file("mce-snapshot", out)
            self.monitor.execute("stop")
            self.monitor.execute("migrate", {"uri": "fd:mce-snapshot"})
            self._wait_migration(deadline, "saving the guest")
        except MonitorError as exc:
            raise HarnessError("boot", str(exc)) from None

    def state_identity(self) -> list[str]:
        """The domain XML without its per-run parts, firmware and QEMU builds: a
        libvirt guest's saved state never mixes with the QEMU backend's (other devices)."""
        config = self._domain_config()
        normal = dataclasses.replace(config, name="mce-guest", console_log=Path("console.log"),
                                     kernel=Path(config.kernel.name), initrd=Path(config.initrd.name),
                                     incoming=False, console_append=False)
        return ["backend=libvirt", libvirt_xml.build_domain_xml(normal),
                f"firmware={file_digest(config.firmware)}", f"qemu={qemu_build(self.qemu_binary)}"]

    def resume_incoming(self, deadline: Deadline) -> None:
        """Wait until QEMU has loaded the saved state, then resume through libvirt
        (so libvirt's idea of the domain's state follows)."""
        libvirt, _ = _libvirt()
        try:
            self._wait_migration(deadline, "restoring the guest")
            self.read_limits()  # still paused: loaded, not yet running, as the QEMU backend's
            self._dom.resume()
        except libvirt.libvirtError as exc:
            raise HarnessError("boot", f"restoring the guest failed: {_message(exc)}") from None
        except MonitorError as exc:
            # QEMU exits when the stream does not load (truncated, garbage, another version).
            why = self.died() or str(exc)
            raise HarnessError("boot", f"restoring the guest failed: {why}") from None

    def fresh(self, artifacts: Path, disk: Path | None = None) -> "LibvirtGuest":
        return LibvirtGuest(image=self.image, spec=self.spec, artifacts=artifacts, accel=self.accel,
                            qemu_binary=self.qemu_binary, extra_cmdline=self.extra_cmdline, connect=self.uri)

    def shutdown(self, timeout: float = 5) -> None:
        """Destroy the domain (it is transient: then it is gone); always closes everything. Idempotent."""
        dom, self._dom = self._dom, None
        conn, self._conn = self._conn, None
        monitor, self.monitor = self.monitor, None
        console, self._console = self._console, None
        volumes, self._volumes = self._volumes, None
        if self.ssh_via is not None:
            self.ssh_via.close()
        if conn is None:
            return
        libvirt, _ = _libvirt()
        try:
            if dom is not None:
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    pass  # already gone
            self._copy_qemu_log()
        finally:
            if console is not None:
                console.close()
            for name in self._run_volumes if volumes is not None else ():
                volumes.delete(name)  # when the domain never started
            if monitor is not None:
                monitor.close()
            if self._lifecycle_id is not None:
                try:
                    conn.domainEventDeregisterAny(self._lifecycle_id)
                except libvirt.libvirtError:
                    pass
                self._lifecycle_id = None
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _copy_qemu_log(self) -> None:
        # libvirt keeps QEMU's command line and stderr in its own log (local connections).
        source = Path("/var/log/libvirt/qemu") / f"{self.name}.log"
        try:
            (self.artifacts / "qemu.log").write_bytes(source.read_bytes())
        except OSError:
            pass


def _emulator_path(binary: str) -> str:
    if os.path.isabs(binary):
        return binary
    for folder in os.environ.get("PATH", "/usr/bin").split(os.pathsep):
        candidate = Path(folder) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return f"/usr/bin/{binary}"


def _domain_pid(name: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


# --- attaching to a domain the user already has --------------------------------

ATTACH_SSH_WAIT_S = 5.0
ATTACH_KEYS = {"ssh_host": str, "ssh_port": int, "ssh_user": str, "ssh_key": str, "ssh_host_key": str}


@dataclass(frozen=True)
class AttachConfig:
    """How to reach a domain's guest over SSH (a small YAML file)."""
    ssh_host: str
    ssh_port: int
    ssh_key: Path           # the client's private ed25519 key
    ssh_host_key: str       # the guest's host key line, pinned ("ssh-ed25519 AAAA...")
    ssh_user: str = "root"  # the probe reads /proc/kpageflags and writes sysctls: root


def load_attach_config(path: Path) -> AttachConfig:
    """One line naming the file and key for any mistake."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with {', '.join(ATTACH_KEYS)}")
    for key, value in data.items():
        if key not in ATTACH_KEYS:
            raise InputError(f"{path}: {key}: unknown key (known: {', '.join(ATTACH_KEYS)})")
        if not isinstance(value, ATTACH_KEYS[key]) or isinstance(value, bool):
            raise InputError(f"{path}: {key}: expected {ATTACH_KEYS[key].__name__}, got {value!r}")
    missing = [k for k in ATTACH_KEYS if k not in data and k != "ssh_user"]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}")
    if len(data["ssh_host_key"].split()) < 2:
        raise InputError(f"{path}: ssh_host_key: expected 'TYPE BASE64', e.g. 'ssh-ed25519 AAAA...'")
    key = Path(data["ssh_key"])
    if not key.is_absolute():
        key = Path(path).resolve().parent / key
    return AttachConfig(ssh_host=data["ssh_host"], ssh_port=data["ssh_port"], ssh_key=key,
                        ssh_host_key=data["ssh_host_key"], ssh_user=data.get("ssh_user", "root"))


def check_attachable(uri: str, name: str, attach: AttachConfig, scenarios, snapshot: bool) -> None:
    """Before anything starts: the domain exists and runs, has what each scenario
    needs, and an SSH server answers where the config says."""
    libvirt, _ = _libvirt()
    if snapshot:
        raise InputError(f"--domain {name}: --snapshot restores guests of our own; an attached domain is used as it is")
    conn = open_connection(uri)
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise InputError(f"--domain {name}: {_message(exc)} (at {uri})") from None
        state, max_kib, _, vcpus, _ = dom.info()
        if not dom.isActive():
            raise InputError(f"--domain {name}: the domain is not running (at {uri})")
        for s in scenarios:
            need = []
            if s.guest.vcpus > vcpus:
                need.append(f"{s.guest.vcpus} vCPUs (the domain has {vcpus})")
            elif (s.guest.vcpus != vcpus and s.inject.fields is not None and not s.inject.broadcast
                  and s.inject.fields.status & mce.MCI_STATUS_UC):
                # QEMU raises it on one vCPU only: the other vCPUs miss the guest's
                # rendezvous and it panics ("Not all CPUs entered broadcast exception handler").
                need.append(f"exactly {s.guest.vcpus} vCPU(s) for an uncorrected error without broadcast "
                            f"(the domain has {vcpus})")
            if s.guest.memory_mib > max_kib >> 10:
                need.append(f"{s.guest.memory_mib} MiB of memory (the domain has {max_kib >> 10})")
            if s.guest.disk_mib:
                need.append("a scratch disk as /dev/vda (an attached domain's disks are left alone)")
            if s.guest.pmem_mib:
                need.append("a pmem range on its kernel command line (memmap=, set when it boots)")
            if need:
                raise InputError(f"{s.path}: guest: needs {' and '.join(need)}; --domain {name} cannot run it")
    finally:
        conn.close()
    try:
        wait_for_banner(attach.ssh_port, Deadline(ATTACH_SSH_WAIT_S, "ssh"), host=attach.ssh_host)
    except HarnessError as exc:
        raise InputError(f"--domain {name}: {exc.message}") from None


class ConsoleRecorder:
    """The domain's serial console (a pty) copied into a file through a libvirt
    stream, without taking it from another client (VIR_DOMAIN_CONSOLE_SAFE)."""

    def __init__(self, conn, dom, path: Path):
        libvirt, _ = _libvirt()
        self._file = path.open("ab", buffering=0)
        self._stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            dom.openConsole(None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_SAFE)
        except libvirt.libvirtError as exc:
            self._file.close()
            raise HarnessError("boot", f"cannot read the console of domain {dom.name()}: {_message(exc)}") from None
        self._stream.eventAddCallback(libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                                      | libvirt.VIR_STREAM_EVENT_HANGUP, self._on_event, None)

    def _on_event(self, stream, events, opaque) -> None:
        libvirt, _ = _libvirt()
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            try:
                data = stream.recv(65536)
            except libvirt.libvirtError:
                return
            if isinstance(data, bytes) and data:
                try:
                    self._file.write(data)
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        libvirt, _ = _libvirt()
        for step in (self._stream.eventRemoveCallback, self._stream.abort):
            try:
                step()
            except libvirt.libvirtError:
                pass
        # libvirt-python's callback data keeps the stream object, and with it the
        # connection (a remote one: an ssh process), alive for good: free it here.
        stream, self._stream = self._stream, None
        with contextlib.suppress(AttributeError):
            del stream.cb
        if stream._o is not None:
            libvirt.libvirtmod.virStreamFree(stream._o)
            stream._o = None
        self._file.close()


class AttachedGuest(LibvirtGuest):
    """A running domain the user already has: nothing is started, nothing destroyed;
    the probe goes in over SSH, the MCE through libvirt's monitor passthrough."""
    boots = False

    def __init__(self, *, attach: AttachConfig, domain: str, **config):
        super().__init__(**config)
        self.name = domain
        self.attach = attach
        self.ssh_host, self.ssh_port, self.ssh_user = attach.ssh_host, attach.ssh_port, attach.ssh_user
        self.ssh_via = None  # its SSH address is the one given, as seen from here
        self.accel = "attached"
        self._console: ConsoleRecorder | None = None

    def ssh_keys(self, image: GuestImage) -> tuple[Path, str]:
        return self.attach.ssh_key, self.attach.ssh_host_key

    def launch(self, deadline: Deadline) -> None:
        try:
            libvirt, _ = _libvirt()
            self._conn = open_connection(self.uri)
        except InputError as exc:
            raise HypervisorUnavailable(str(exc)) from None
        try:
            self._dom = self._conn.lookupByName(self.name)
            if not self._dom.isActive():
                raise HarnessError("boot", f"domain {self.name} is not running")
            self.accel = "kvm" if 'type="kvm"' in self._dom.XMLDesc(0).split(">", 1)[0].replace("'", '"') else "tcg"
            self._watch(libvirt)
            self._console = ConsoleRecorder(self._conn, self._dom, self.console_log)
            self.read_limits()  # asked of the running QEMU: it is the user's, we do not pause it
        except libvirt.libvirtError as exc:
            self.shutdown()
            raise HarnessError("boot", f"domain {self.name}: {_message(exc)}") from None
        except (MonitorError, HarnessError) as exc:
            self.shutdown()
            raise HarnessError("boot", exc.message if isinstance(exc, HarnessError) else str(exc)) from None

    def shutdown(self, timeout: float = 5) -> None:
        """Let go of the domain without stopping it."""
        console, self._console = self._console, None
        if console is not None:
            console.close()
        self._dom = None  # so the base class's shutdown does not destroy it
        super().shutdown(timeout)

    def _copy_qemu_log(self) -> None:
        pass  # the user's domain's log holds its whole history, not this run's

    def fresh(self, artifacts: Path, disk: Path | None = None) -> "AttachedGuest":
        raise HarnessError("boot", "an attached domain cannot be saved or copied")

    def save(self, path: Path, deadline: Deadline) -> None:
        raise HarnessError("boot", "an attached domain cannot be saved")
