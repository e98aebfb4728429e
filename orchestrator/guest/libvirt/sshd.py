"""A private OpenSSH server on 127.0.0.1, so that this machine's libvirtd is
also reachable the way a remote hypervisor is: `qemu+ssh://root@127.0.0.1:PORT/system`.

    python -m orchestrator.guest.libvirt.sshd DIR      # start one, print its URI (make sshd-endpoint)

No systemd and nothing of the system's sshd set-up is used: its own config,
host key, authorized key (made here for this server only) and pid file, all
in one folder; it listens on loopback only. The host key is pinned: libvirt's
ssh transport runs the `command=` of the URI instead of `ssh`, a small
script that passes `ssh` a known_hosts file holding this server's key and
StrictHostKeyChecking=yes (libvirt's ssh transport has no known_hosts
parameter of its own; `no_verify=1` would accept any key).
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.guest.qemu import free_loopback_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # OpenSSH refuses to start without it


class SshdError(RuntimeError):
    pass


def sshd_config(port: int, folder: Path, extra: tuple[str, ...] = ()) -> str:
    """The server's whole configuration (`extra` lines last, e.g. for tests). Pure."""
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {folder / 'host_ed25519'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        f"PidFile {folder / 'sshd.pid'}",
        *extra,
        "",
    ])


def ssh_wrapper(known_hosts: Path) -> str:
    """The `ssh` that libvirt runs (URI `command=`): the pinned host key only. Pure."""
    return ("#!/bin/sh\n"
            f"exec ssh -o UserKnownHostsFile={shlex.quote(str(known_hosts))} -o GlobalKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=yes -o ConnectTimeout=10 \"$@\"\n")


def libvirt_uri(port: int, client_key: Path, wrapper: Path, user: str = "root") -> str:
    """The libvirt URI of that server's libvirtd. Pure."""
    return f"qemu+ssh://{user}@127.0.0.1:{port}/system?keyfile={client_key}&command={wrapper}&no_tty=1"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (sshd's sessions start sessions of their own: no process group reaches them)."""
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


class LocalSshd:
    """One sshd process on 127.0.0.1:port, with its own keys in `folder`. start()
    waits for its banner; stop() ends it and every session it forked, as a
    host that goes away would: its connections drop."""

    def __init__(self, folder: Path, port: int | None = None, extra_config: tuple[str, ...] = ()):
        self.folder = Path(folder)
        self.extra_config = extra_config
        self.port = port or 0
        self.process: subprocess.Popen | None = None
        self.client_key = self.folder / "client_ed25519"
        self.known_hosts = self.folder / "known_hosts"
        self.wrapper = self.folder / "ssh-pinned"

    @property
    def uri(self) -> str:
        return libvirt_uri(self.port, self.client_key, self.wrapper)

    def _keygen(self, path: Path) -> str:
        if not path.exists():
            done = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mce-orchestrator",
                                   "-f", str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SshdError(f"ssh-keygen failed: {done.stderr.strip()}")
        return path.with_suffix(".pub").read_text().strip()

    def start(self, timeout: float = 10) -> "LocalSshd":
        if not SSHD.exists():
            raise SshdError(f"{SSHD} is not installed (Debian: openssh-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.port = self.port or free_loopback_port()
        host_key = self._keygen(self.folder / "host_ed25519")
        (self.folder / "authorized_keys").write_text(self._keygen(self.client_key) + "\n")
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key.split()[:2])}\n")
        self.wrapper.write_text(ssh_wrapper(self.known_hosts))
        self.wrapper.chmod(0o700)
        config = self.folder / "sshd_config"
        config.write_text(sshd_config(self.port, self.folder, self.extra_config))
        log = (self.folder / "sshd.log").open("ab")
        # -D: stays in the foreground, so its pid is ours to stop; a new session
        # (process group) so that stop() reaches the per-connection children too.
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        end = time.monotonic() + timeout
        while not self._greets():
            if self.process.poll() is not None:
                raise SshdError(f"sshd exited with {self.process.returncode}: "
                                f"{(self.folder / 'sshd.log').read_text(errors='replace').strip()[-300:]}")
            if time.monotonic() > end:
                self.stop()
                raise SshdError(f"sshd on 127.0.0.1:{self.port} did not answer within {timeout:g} s")
            time.sleep(0.05)
        return self

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4) == b"SSH-"
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server and its sessions (idempotent)."""
        process, self.process = self.process, None
        if process is None:
            return
        # The listener first (no new sessions), then what it forked.
        below = descendants(process.pid)
        process.kill()
        for pid in below + descendants(process.pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        process.wait()

    def __enter__(self) -> "LocalSshd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """Start a server that outlives this command (for `make`); print its pid and URI."""
    if len(argv) != 1:
        print("usage: python -m orchestrator.guest.libvirt.sshd DIR", file=sys.stderr)
        return 2
    try:
        server = LocalSshd(Path(argv[0]).resolve()).start()
    except SshdError as exc:
        print(f"sshd: error: {exc}", file=sys.stderr)
        return 2
    print(f"sshd: pid {server.process.pid}; libvirt URI: {server.uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
