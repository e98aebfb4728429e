"""What a domain on a remote libvirt host needs, carried there by libvirt itself:
storage volumes in a directory pool of ours, filled through upload streams.

    python -m orchestrator.guest.libvirt.volumes --connect URI [--remove]   # list (or remove) our volumes

Nothing is installed on that host beyond libvirt and QEMU: the pool
`mce-orchestrator` (a directory, root-only, made on first use) holds

- cached files (kernel, initramfs), named by their content:
  `mce-orch-img-<sha256 prefix>-<size>-<file name>`; a second run finds the
  volume by name and checks its size, so it uploads nothing. A file is first
  uploaded under a per-process partial name, then cloned to its final name on
  the host: a final name always holds a whole file, even when a run is
  killed mid-upload.
- per-run volumes (the scratch disk), named after the domain
  (`mce-orch-<host>-<pid>-<run id>-<n>-disk`): deleted as soon as QEMU holds
  it open, or after the run, whatever happens.

A later run deletes a per-run or partial volume only when it is provably
abandoned: no running domain on that libvirtd uses it (whoever started the
domain) and it has not been written for GRACE_S. A hostname and a pid prove
nothing (another container sharing the libvirtd may have the same ones), and
a random run id only keeps names apart. Cached volumes stay until `--remove`.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.guest.libvirt.xml import DOMAIN_PREFIX

POOL_NAME = "mce-orchestrator"
POOL_PATH = "/var/lib/libvirt/mce-orchestrator"
IMAGE_PREFIX = "mce-orch-img-"
DIGEST_CHARS = 32
CHUNK = 1 << 20
# A per-run or partial volume untouched this long, and used by no running domain, is a leftover:
# an upload writes it continuously, and a scratch disk is deleted moments after its domain starts.
GRACE_S = 3600


class VolumeError(RuntimeError):
    """Creating, filling or removing a volume failed (one line)."""


def is_remote(uri: str) -> bool:
    """Whether a URI names another machine (or a transport that reaches one): then the
    domain's files go there as volumes. qemu:///system and qemu+unix:// are local. Pure."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return bool(parts.hostname) or transport not in ("", "unix")


def image_volume_name(digest: str, size: int, filename: str) -> str:
    """A cached file's volume: its content's digest and size, and its name for people. Pure."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", filename)[:40] or "file"
    return f"{IMAGE_PREFIX}{digest[:DIGEST_CHARS]}-{size}-{readable}"


def image_volume_size(name: str) -> int | None:
    """The size a cached volume's name promises, or None if it is not one. Pure."""
    m = re.fullmatch(re.escape(IMAGE_PREFIX) + r"[0-9a-f]{%d}-(\d+)-[A-Za-z0-9._-]+" % DIGEST_CHARS, name)
    return int(m.group(1)) if m else None


def partial_volume_name(final: str, run_id: str) -> str:
    return f"{final}.part-{run_id}"


def run_volume_name(domain: str, what: str) -> str:
    return f"{domain}-{what}"


def leftovers(volumes, in_use: set[str], now: float, grace: float = GRACE_S) -> list[str]:
    """Per-run and partial volumes that are provably abandoned. `volumes`: (name, path,
    mtime) of each volume in the pool; `in_use`: the paths running domains name. Pure."""
    found = []
    for name, path, mtime in volumes:
        per_run = name.startswith(DOMAIN_PREFIX) and not name.startswith(IMAGE_PREFIX)
        partial = name.startswith(IMAGE_PREFIX) and ".part-" in name
        if (per_run or partial) and path not in in_use and mtime is not None and now - mtime > grace:
            found.append(name)
    return found


def ours(name: str) -> bool:
    return name.startswith(DOMAIN_PREFIX)  # mce-orch-img-... too


def pool_xml(name: str = POOL_NAME, path: str = POOL_PATH) -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = path
    _root_only(target, "0700")
    ET.indent(pool)
    return ET.tostring(pool, encoding="unicode") + "\n"


def volume_xml(name: str, capacity: int) -> str:
    """A raw file volume, root-only: the initramfs holds the guest's private host key. Pure."""
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", type="raw")
    _root_only(target, "0600")
    ET.indent(volume)
    return ET.tostring(volume, encoding="unicode") + "\n"


def _root_only(target: ET.Element, mode: str) -> None:
    permissions = ET.SubElement(target, "permissions")
    ET.SubElement(permissions, "mode").text = mode
    ET.SubElement(permissions, "owner").text = "0"
    ET.SubElement(permissions, "group").text = "0"


@lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def content_digest(path: Path) -> str:
    """sha256 of a file, once per process per version of it (size and mtime)."""
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def _message(exc) -> str:
    text = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
    return " ".join((text or str(exc)).split())


class VolumeStore:
    """Our pool on one libvirt connection: cached and per-run volumes."""

    def __init__(self, conn):
        import libvirt
        self._libvirt = libvirt
        self._conn = conn
        self._pool = None

    @property
    def pool(self):
        """Our pool, defined, built and started on first use (two workers may race: both fine)."""
        if self._pool is None:
            libvirt = self._libvirt
            try:
                pool = self._conn.storagePoolLookupByName(POOL_NAME)
            except libvirt.libvirtError:
                try:
                    pool = self._conn.storagePoolDefineXML(pool_xml(), 0)
                    pool.build(0)
                    pool.setAutostart(1)
                except libvirt.libvirtError as exc:
                    try:
                        pool = self._conn.storagePoolLookupByName(POOL_NAME)  # another worker was first
                    except libvirt.libvirtError:
                        raise VolumeError(f"cannot make storage pool {POOL_NAME} at {POOL_PATH}: "
                                          f"{_message(exc)}") from None
            try:
                if not pool.isActive():
                    pool.create(0)
            except libvirt.libvirtError as exc:
                if not pool.isActive():
                    raise VolumeError(f"cannot start storage pool {POOL_NAME}: {_message(exc)}") from None
            self._pool = pool
        return self._pool

    def names(self) -> list[str]:
        try:
            self.pool.refresh(0)
            return sorted(self.pool.listVolumes())
        except self._libvirt.libvirtError as exc:
            raise VolumeError(f"cannot list storage pool {POOL_NAME}: {_message(exc)}") from None

    def _lookup(self, name: str):
        try:
            return self.pool.storageVolLookupByName(name)
        except self._libvirt.libvirtError:
            return None

    def cached(self, path: Path, run_id: str) -> str:
        """The host-side path of `path`'s content, uploaded unless a whole copy is there."""
        size = path.stat().st_size
        name = image_volume_name(content_digest(path), size, path.name)
        vol = self._lookup(name)
        if vol is not None and vol.info()[1] == size:
            return vol.path()
        if vol is not None:  # a name that promises another size: not ours to trust
            self.delete(name)
        partial = self.upload(path, partial_volume_name(name, run_id))
        try:
            try:
                vol = self.pool.createXMLFrom(volume_xml(name, size), partial, 0)
            except self._libvirt.libvirtError as exc:
                vol = self._lookup(name)  # another worker finished the same file first?
                if vol is None or vol.info()[1] != size:
                    raise VolumeError(f"cannot store {path.name} as volume {name}: {_message(exc)}") from None
        finally:
            self.delete(partial.name())
        return vol.path()

    def upload(self, path: Path, name: str):
        """A new volume `name` holding `path`, sent through a libvirt stream; on any
        failure the volume is deleted and VolumeError says why."""
        libvirt = self._libvirt
        size = path.stat().st_size
        try:
            vol = self.pool.createXML(volume_xml(name, size), 0)
        except libvirt.libvirtError as exc:
            raise VolumeError(f"cannot create volume {name} in pool {POOL_NAME}: {_message(exc)}") from None
        stream = self._conn.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            with path.open("rb") as f:
                stream.sendAll(lambda _stream, nbytes, source: source.read(min(nbytes, CHUNK)), f)
            stream.finish()
        except (libvirt.libvirtError, OSError) as exc:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            self.delete(name)
            raise VolumeError(f"uploading {path} to volume {name}: {_message(exc)}") from None
        return vol

    def delete(self, name: str) -> bool:
        vol = self._lookup(name)
        if vol is None:
            return False
        try:
            vol.delete(0)
            return True
        except self._libvirt.libvirtError:
            return False

    def volumes(self) -> list[tuple[str, str, float | None]]:
        """(name, path, last modification time) of each volume in the pool."""
        found = []
        for name in self.names():
            vol = self._lookup(name)
            if vol is None:
                continue
            try:
                found.append((name, vol.path(), volume_mtime(vol.XMLDesc(0))))
            except self._libvirt.libvirtError:
                continue
        return found

    def reap(self, in_use: set[str], now: float | None = None) -> list[str]:
        """Delete per-run and partial volumes no running domain uses, untouched for GRACE_S."""
        try:
            listed = self.volumes()
        except VolumeError:
            return []
        return [name for name in leftovers(listed, in_use, time.time() if now is None else now)
                if self.delete(name)]


def volume_mtime(xml: str) -> float | None:
    """A volume's <target><timestamps><mtime> (seconds, with a fraction), None if not given. Pure."""
    try:
        text = ET.fromstring(xml).findtext("target/timestamps/mtime")
        return float(text) if text else None
    except (ET.ParseError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.guest.libvirt.volumes",
                                     description="List (or remove) the orchestrator's volumes on a libvirt host.")
    parser.add_argument("--connect", default="qemu:///system", metavar="URI")
    parser.add_argument("--remove", action="store_true",
                        help="delete them all (cached files are uploaded again when next needed)")
    args = parser.parse_args(argv)
    from orchestrator.guest.libvirt.connection import open_connection
    from orchestrator.plumbing.outcome import InputError
    try:
        conn = open_connection(args.connect)
    except InputError as exc:
        print(f"libvirt_volumes: error: {exc}", file=sys.stderr)
        return 2
    try:
        store = VolumeStore(conn)
        for name in store.names():
            if ours(name):
                gone = args.remove and store.delete(name)
                print(f"{name}{'  (removed)' if gone else ''}")
    except VolumeError as exc:
        print(f"libvirt_volumes: error: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
