"""The SSH keys of an image: the client's (kept in the cache, 0600) and the guest's host
key (baked into the initramfs, its public line pinned by the client)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.guest.images.errors import ImageError, run
from orchestrator.guest.images.rootfs import UnpackedRoot


def make_keys(keys: Path, tree: UnpackedRoot) -> tuple[Path, str, str, Path]:
    """(client private key, client public line, host public line, dropbear host key file)."""
    keys.mkdir(mode=0o700)
    os.chmod(keys, 0o700)
    client = keys / "client_key"
    if shutil.which("ssh-keygen"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mceorch-client", "-f", str(client)],
             step="generating the client key (ssh-keygen)")
        client_line = " ".join(client.with_suffix(".pub").read_text().split()[:2])
    else:
        # No openssh-client on the host: make the key with dropbear and convert it to
        # the OpenSSH format paramiko reads.
        raw = keys / "client_key.dropbear"
        tree.run("usr/bin/dropbearkey", "-t", "ed25519", "-f", str(raw), step="generating the client key")
        convert = "usr/bin/dropbearconvert" if tree.exists("usr/bin/dropbearconvert") else "usr/lib/dropbear/dropbearconvert"
        tree.run(convert, "dropbear", "openssh", str(raw), str(client), step="converting the client key")
        client_line = public_line(tree.run("usr/bin/dropbearkey", "-y", "-f", str(raw), step="reading the client key"))
        raw.unlink()
        client.with_suffix(".pub").write_text(client_line + " mceorch-client\n")
    os.chmod(client, 0o600)

    host = keys / "dropbear_ed25519_host_key"
    tree.run("usr/bin/dropbearkey", "-t", "ed25519", "-f", str(host), step="generating the host key (dropbearkey)")
    os.chmod(host, 0o600)
    host_line = public_line(tree.run("usr/bin/dropbearkey", "-y", "-f", str(host), step="reading the host key"))
    (keys / "host_key.pub").write_text(host_line + "\n")
    return client, client_line, host_line, host


def public_line(output: str) -> str:
    # dropbearkey -y prints "Public key portion is:", "ssh-ed25519 AAAA... user@host", "Fingerprint: ...".
    for line in output.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise ImageError("dropbearkey -y: no ssh-ed25519 line in its output")
