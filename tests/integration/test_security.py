"""The harness on a real guest: loopback only, keys private, no key material in artifacts."""
import io
import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.inject.races import highorder
from orchestrator.guest.images import ensure_image
from orchestrator.plumbing.outcome import Outcome
from orchestrator.report import ConsoleReporter
from orchestrator.runner import RunOptions, run_scenario
from orchestrator.scenario import load_scenario

from .conftest import REPO


def listening_addresses(pid: int) -> list[str]:
    """Local addresses of the TCP sockets `pid` listens on (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                address = local.split(":")[0]
                found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)) if width == 8 else address)
    return found


def test_loopback_only_private_keys_and_clean_artifacts(tmp_path):
    seen = {}

    def inspect(phase, ctx):
        if phase == "locate":
            seen["listening"] = listening_addresses(ctx.guest.pid)

    result = run_scenario(load_scenario(REPO / "scenarios" / "srao-anon-late-kill.yaml"), tmp_path,
                          RunOptions(hook=inspect), ConsoleReporter(io.StringIO()))
    assert result.outcome == Outcome.PASS, result.reasons
    assert seen["listening"] and set(seen["listening"]) == {"127.0.0.1"}

    image = ensure_image("debian-6.1", repo_root=REPO)
    for path, mode in ((image.client_key, 0o600), (image.client_key.parent, 0o700), (image.directory, 0o700),
                       (image.initrd, 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path

    key_text = image.client_key.read_text()
    key_body = "".join(line for line in key_text.splitlines() if "PRIVATE KEY" not in line)
    for artifact in result.artifacts.rglob("*"):
        if not artifact.is_file():  # the scenario/ folder (its copy of the scenario)
            continue
        content = artifact.read_bytes().decode(errors="replace")
        assert "PRIVATE KEY" not in content, artifact
        assert key_body[:40] not in content, artifact


# What an unprivileged local user (uid 65534) does, given every socket QEMU listens on: connect,
# speak gdb's Remote Serial Protocol and HMP, and report what came back. Runs with the system's
# python3, as the attacker would; only the standard library.
ATTACKER = r'''
import json, socket, sys
found = []
for kind, address in json.loads(sys.argv[1]):
    family = socket.AF_UNIX if kind == "unix" else (socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(address if kind == "unix" else tuple(address))
    except OSError as exc:
        found.append([kind, address, "refused", exc.strerror or str(exc)])
        continue
    reply = b""
    try:
        s.sendall(b"+$?#3f")                           # RSP: why did you stop?
        s.sendall(b"$qRcmd,696e666f2076657273696f6e#31")  # RSP: monitor info version
        s.sendall(b"\r\ninfo version\r\n")                # HMP
        while len(reply) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError:
        pass
    found.append([kind, address, "answered", reply.decode("latin-1")])
    s.close()
print(json.dumps(found))
'''


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def qemu_listeners(pid: int) -> list[tuple[str, object]]:
    """Every socket process `pid` listens on: ("tcp", [host, port]) and ("unix", path)."""
    inodes = _socket_inodes(pid)
    found: list[tuple[str, object]] = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                address, port = local.split(":")
                if table == "tcp":
                    host = ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8))
                    host = socket.inet_ntop(socket.AF_INET6, raw)
                found.append(("tcp", [host, int(port, 16)]))
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Flags 00010000: a listening socket; the path, when it has one (abstract: "@...").
        if len(fields) >= 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
            path = fields[7]
            found.append(("unix", "\0" + path[1:] if path.startswith("@") else path))
    return found


def attack(listeners) -> list:
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-I", "-c", ATTACKER, json.dumps(listeners)],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("backend", ["qemu", "libvirt"])
@pytest.mark.parametrize("name", ["high-order-kernel-page", "different-compound-page"])
def test_no_local_user_reaches_the_gdbstub_of_a_race(tmp_path, monkeypatch, backend, name):
    """While a race scenario's gdbstub listens (before the harness connects, the moment an
    attacker would take), uid 65534 tries every socket QEMU listens on: none speaks RSP or
    HMP to it (the guest's SSH forward on 127.0.0.1 answers with its banner, key auth only);
    and the race still passes."""
    if backend == "libvirt":
        from orchestrator.guest.libvirt.daemons import ensure_running
        ensure_running()
    seen = {}

    def inspect(phase, ctx):
        if phase == "inject":
            seen["pid"] = ctx.guest.pid
            seen["ssh_port"] = ctx.guest.ssh_port

    real = highorder.RemoteTarget

    def attacked_first(*args, **kwargs):
        listeners = qemu_listeners(seen["pid"])
        seen["listeners"] = listeners
        seen["argv"] = Path(f"/proc/{seen['pid']}/cmdline").read_bytes().decode().split("\0")
        seen["attack"] = attack(listeners)
        return real(*args, **kwargs)

    monkeypatch.setattr(highorder, "RemoteTarget", attacked_first)
    result = run_scenario(load_scenario(REPO / "scenarios" / f"{name}.yaml"), tmp_path,
                          RunOptions(hook=inspect, backend=backend), ConsoleReporter(io.StringIO()))
    assert "attack" in seen, "the gdbstub was never started"
    for entry in seen["attack"]:
        print("uid 65534 ->", *entry)  # shown when the test fails
    ssh = ["tcp", ["127.0.0.1", seen["ssh_port"]]]
    others = [entry for entry in seen["listeners"] if list(entry) != ssh]
    assert others, f"QEMU listened on nothing but SSH while its gdbstub was up: {seen['listeners']}"
    for kind, address, what, reply in seen["attack"]:
        if [kind, address] == ssh:
            assert what == "refused" or reply == "" or reply.startswith("SSH-"), reply
        else:
            assert what == "refused", f"uid 65534 reached QEMU's {kind} socket {address}: {reply[:200]!r}"
    assert result.outcome == Outcome.PASS, result.reasons
    # Both backends' user networking is restrict=on: the guest opens no connection to the host.
    netdevs = [a for a in seen["argv"] if a.startswith("user,") or '"type":"user"' in a]
    assert netdevs and all("restrict=on" in a for a in netdevs), netdevs


def _our_domains() -> set[str]:
    import libvirt
    from orchestrator.guest.libvirt import xml as libvirt_xml
    conn = libvirt.open("qemu:///system")
    try:
        return {d.name() for d in conn.listAllDomains() if d.name().startswith(libvirt_xml.DOMAIN_PREFIX)}
    finally:
        conn.close()


def test_two_runs_in_other_pid_namespaces_sharing_one_libvirtd_keep_their_guests(tmp_path):
    """Two CI containers: the same hostname, each its own PID namespace, one libvirtd. The
    first orchestrator is not pid 1 in its namespace (its shell is), the second is: the
    second sees the first's domain, whose pid is not alive in its namespace. Neither may
    touch the other's guest: both PASS."""
    from orchestrator.guest.libvirt.daemons import ensure_running
    ensure_running()
    before = _our_domains()
    run = [sys.executable, "-m", "orchestrator", "run", "srao-anon-late-kill", "--backend", "libvirt", "--results"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    # Some 500 processes first, so the first orchestrator's pid (about 500) is surely not alive in
    # the second's namespace; not exec: the shell stays pid 1.
    shell = "i=0; while [ $i -lt 500 ]; do /bin/true; i=$((i+1)); done; " + \
        " ".join(shlex.quote(a) for a in run + [str(tmp_path / "first")])
    first = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", shell], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 300
        while not (_our_domains() - before) and first.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        assert _our_domains() - before, "the first run's domain never appeared"
        second = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *run, str(tmp_path / "second")],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        out_first, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert first.returncode == 0, out_first[-3000:]
    for which in ("first", "second"):
        report = json.loads((tmp_path / which / "latest" / "report.json").read_text())
        assert [s["outcome"] for s in report["scenarios"]] == ["PASS"], which
