"""The guest's SSH on a remote libvirt host: through an SSH connection to that host.

The guest's SSH forward listens on the hypervisor's loopback (127.0.0.1:PORT
there), so from here it is reached through the same SSH server libvirt's
qemu+ssh transport uses: one paramiko connection per guest to user@host:port
of the URI, and a `direct-tcpip` channel to 127.0.0.1:PORT for each
connection to the guest (the banner polls, the session). The guest's own host
key is still pinned end to end; the hypervisor's is pinned the way libvirt's
`ssh` pins it: the known_hosts files that ssh itself reports (`ssh -G`, run
through the URI's `command=` wrapper when it has one, so a wrapper passing
UserKnownHostsFile is honoured). An unknown or changed host key is refused
(never added). Local URIs and transports without SSH (qemu+tls, qemu+tcp)
connect directly, as before.
"""
from __future__ import annotations

import getpass
import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import paramiko

from orchestrator.plumbing.outcome import HarnessError

SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
SSH_G_TIMEOUT_S = 10
OPEN_PROHIBITED = 1  # SSH_OPEN_ADMINISTRATIVELY_PROHIBITED: the server forbids forwarding
# paramiko's own account of the tunnel's connection: kept off the terminal (what
# fails reaches the user as one HarnessError line instead).
LOG_CHANNEL = "paramiko.mce-hypervisor"
logging.getLogger(LOG_CHANNEL).addHandler(logging.NullHandler())
logging.getLogger(LOG_CHANNEL).propagate = False


@dataclass(frozen=True)
class SshEndpoint:
    """What a libvirt URI says of its SSH transport."""
    transport: str
    host: str
    user: str | None
    port: int | None
    keyfile: str | None
    command: str              # the ssh libvirt runs: `command=`, else "ssh"
    known_hosts: str | None   # libssh/libssh2 transports' `known_hosts=`


def ssh_endpoint(uri: str) -> SshEndpoint | None:
    """The SSH endpoint of a remote URI, or None when the URI has none (local, tls, tcp). Pure."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    if transport not in SSH_TRANSPORTS or not parts.hostname:
        return None
    query = dict(parse_qsl(parts.query))
    return SshEndpoint(transport=transport, host=parts.hostname, user=unquote(parts.username) if parts.username else None,
                       port=parts.port, keyfile=query.get("keyfile"), command=query.get("command") or "ssh",
                       known_hosts=query.get("known_hosts"))


@dataclass(frozen=True)
class ResolvedSsh:
    """Where and how to log in to the hypervisor, as ssh itself would."""
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def ssh_config_argv(endpoint: SshEndpoint) -> list[str]:
    """`ssh -G` with the options libvirt passes: prints the configuration ssh would use. Pure."""
    argv = [endpoint.command, "-G"]
    if endpoint.port:
        argv += ["-p", str(endpoint.port)]
    if endpoint.user:
        argv += ["-l", endpoint.user]
    if endpoint.keyfile:
        argv += ["-i", endpoint.keyfile]
    return argv + [endpoint.host]


def parse_ssh_config(text: str, endpoint: SshEndpoint) -> ResolvedSsh:
    """`ssh -G` output -> where to connect, which keys, which known_hosts. Pure."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        values.setdefault(key.lower(), []).append(value.strip())

    def files(key: str) -> tuple[str, ...]:
        return tuple(os.path.expanduser(f) for value in values.get(key, []) for f in value.split() if f != "none")

    return ResolvedSsh(hostname=values.get("hostname", [endpoint.host])[0],
                       port=int(values.get("port", [endpoint.port or 22])[0]),
                       user=values.get("user", [endpoint.user or getpass.getuser()])[0],
                       identity_files=files("identityfile"),
                       known_hosts=files("userknownhostsfile") + files("globalknownhostsfile"))


def libssh_config(endpoint: SshEndpoint) -> ResolvedSsh:
    """The libssh/libssh2 transports read no ssh config: the URI's own parameters. Pure."""
    return ResolvedSsh(hostname=endpoint.host, port=endpoint.port or 22, user=endpoint.user or getpass.getuser(),
                       identity_files=(endpoint.keyfile,) if endpoint.keyfile else (),
                       known_hosts=(endpoint.known_hosts or os.path.expanduser("~/.ssh/known_hosts"),))


def resolve(endpoint: SshEndpoint) -> ResolvedSsh:
    if endpoint.transport != "ssh":
        return libssh_config(endpoint)
    try:
        done = subprocess.run(ssh_config_argv(endpoint), capture_output=True, text=True, timeout=SSH_G_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError("ssh", f"cannot ask {endpoint.command} for its configuration: {exc}") from None
    if done.returncode != 0:
        raise HarnessError("ssh", f"'{' '.join(ssh_config_argv(endpoint))}' exited with {done.returncode}: "
                                  f"{done.stderr.strip()[-200:]}")
    return parse_ssh_config(done.stdout, endpoint)


class HypervisorTunnel:
    """One SSH connection to the hypervisor host, made on first use (and again
    after it dropped); open() gives a channel to a port on that host's loopback,
    a socket for paramiko's `sock=` or for a banner read."""

    def __init__(self, endpoint: SshEndpoint):
        self.endpoint = endpoint
        self._resolved: ResolvedSsh | None = None
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self.channels_opened = 0
        self.dropped = False  # a connection it had went down (the host's sshd, or the host, may be gone)

    @classmethod
    def for_uri(cls, uri: str) -> "HypervisorTunnel | None":
        endpoint = ssh_endpoint(uri)
        return cls(endpoint) if endpoint is not None else None

    @property
    def description(self) -> str:
        if self._resolved is not None:
            return self._resolved.description
        port = f":{self.endpoint.port}" if self.endpoint.port else ""
        return f"{self.endpoint.user + '@' if self.endpoint.user else ''}{self.endpoint.host}{port}"

    def _connect(self, timeout: float) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client is not None else None
        if transport is not None and transport.is_active():
            return transport
        self.dropped = self.dropped or transport is not None
        self.close()
        if self._resolved is None:
            self._resolved = resolve(self.endpoint)
        found = self._resolved
        client = paramiko.SSHClient()
        for path in found.known_hosts:
            if os.path.isfile(path):
                client.load_system_host_keys(path)  # read only: nothing is ever written back
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.set_log_channel(LOG_CHANNEL)
        keys = [path for path in found.identity_files if os.path.isfile(path)]
        try:
            client.connect(found.hostname, found.port, username=found.user, key_filename=keys or None,
                           allow_agent=False, look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout)
        except (paramiko.BadHostKeyException, paramiko.AuthenticationException) as exc:
            client.close()
            raise HarnessError("ssh", f"SSH to the hypervisor {found.description}: {exc}") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HarnessError("ssh", f"SSH to the hypervisor {found.description}: its host key is not in "
                                          f"{' '.join(found.known_hosts) or 'any known_hosts'}") from None
            raise OSError(f"SSH to the hypervisor {found.description}: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise OSError(f"SSH to the hypervisor {found.description}: {exc or type(exc).__name__}") from None
        self._client = client
        return client.get_transport()

    def check(self, timeout: float) -> None:
        """Log in to the hypervisor and let go: HarnessError (host key, login) or OSError
        (unreachable) says why an SSH connection to it fails."""
        with self._lock:
            self._connect(timeout)
        self.close()

    def open(self, host: str, port: int, timeout: float) -> paramiko.Channel:
        """A channel to host:port as the hypervisor sees it. OSError when it may work
        later; HarnessError when it cannot (host key, login, forwarding refused)."""
        with self._lock:
            transport = self._connect(timeout)
        try:
            channel = transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:
            if exc.code == OPEN_PROHIBITED:
                raise HarnessError("ssh", f"the hypervisor {self.description} refuses to forward to "
                                          f"{host}:{port} ({exc.text}): is AllowTcpForwarding off?") from None
            raise OSError(f"through {self.description}: {exc.text}") from None
        except (paramiko.SSHException, EOFError) as exc:
            raise OSError(f"through {self.description}: {exc or type(exc).__name__}") from None
        self.channels_opened += 1
        return channel

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
