"""Volume names, pool and volume XML, which URIs are remote, what a later run reaps;
and the remote guest's domain XML pointing at the volumes, not at our files."""
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.guest.images import GuestImage
from orchestrator.guest.libvirt import volumes
from orchestrator.scenario import GuestSpec

DIGEST = "ab" * 32


@pytest.mark.parametrize("uri, remote", [
    ("qemu:///system", False),
    ("qemu:///session", False),
    ("qemu+unix:///system?socket=/run/libvirt/libvirt-sock", False),
    ("qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k", True),
    ("qemu+ssh://host/system", True),
    ("qemu://host.example/system", True),  # TLS
    ("qemu+tcp://10.0.0.2/system", True),
    ("qemu+libssh2://u@h/system", True),
])
def test_which_uris_are_remote(uri, remote):
    assert volumes.is_remote(uri) is remote


def test_cached_names_carry_digest_and_size_and_say_whose():
    name = volumes.image_volume_name(DIGEST, 3816022, "initrd.img")
    assert name == f"mce-orch-img-{DIGEST[:32]}-3816022-initrd.img"
    assert volumes.image_volume_size(name) == 3816022
    assert volumes.ours(name)
    # Another digest or size is another name: a changed file is uploaded again.
    assert volumes.image_volume_name("cd" * 32, 3816022, "initrd.img") != name
    assert volumes.image_volume_name(DIGEST, 3816023, "initrd.img") != name
    assert volumes.image_volume_name(DIGEST, 1, "a b/../c") == f"mce-orch-img-{DIGEST[:32]}-1-a_b_.._c"
    assert volumes.image_volume_size("mce-orch-img-zz-1-x") is None
    assert volumes.image_volume_size("someone-elses.qcow2") is None


def test_leftovers_are_per_run_and_partial_volumes_no_domain_uses_untouched_for_the_grace_period():
    final = volumes.image_volume_name(DIGEST, 10, "vmlinux")
    now, old, recent = 100000.0, 100000.0 - volumes.GRACE_S - 1, 100000.0 - 60
    pool = "/var/lib/libvirt/mce-orchestrator/"
    listed = [
        ("mce-orch-h-1-0a1b2c3d-1-disk", pool + "a", old),          # abandoned scratch disk
        ("mce-orch-h-1-99999999-1-disk", pool + "b", old),          # same host and pid: in use by a live domain
        ("mce-orch-h-1-12345678-2-disk", pool + "c", recent),       # just uploaded, its domain about to start
        (volumes.partial_volume_name(final, "0a1b2c3d"), pool + "d", old),     # dead upload
        (volumes.partial_volume_name(final, "12345678"), pool + "e", recent),  # upload under way
        ("mce-orch-h-1-0a1b2c3d-3-disk", pool + "f", None),         # no timestamp: nothing proves it
        (final, pool + "g", old),                                   # cached: stays
        ("users-disk.qcow2", pool + "h", old),
    ]
    assert volumes.leftovers(listed, {pool + "b"}, now) == [
        "mce-orch-h-1-0a1b2c3d-1-disk", f"{final}.part-0a1b2c3d"]


def test_volume_mtime_from_its_xml():
    xml = ("<volume><name>v</name><target><path>/p/v</path><timestamps><atime>1.5</atime>"
           "<mtime>1700000000.25</mtime></timestamps></target></volume>")
    assert volumes.volume_mtime(xml) == 1700000000.25
    assert volumes.volume_mtime("<volume><target/></volume>") is None


def test_volume_and_pool_xml_are_root_only_raw():
    vol = ET.fromstring(volumes.volume_xml("v", 123))
    assert vol.find("name").text == "v" and vol.find("capacity").text == "123"
    assert vol.find("capacity").get("unit") == "bytes" and vol.find("target/format").get("type") == "raw"
    # The initramfs holds the guest's private host key.
    assert vol.find("target/permissions/mode").text == "0600"
    assert vol.find("target/permissions/owner").text == "0"
    pool = ET.fromstring(volumes.pool_xml())
    assert pool.get("type") == "dir" and pool.find("name").text == "mce-orchestrator"
    assert pool.find("target/path").text == volumes.POOL_PATH
    assert pool.find("target/permissions/mode").text == "0700"


def test_content_digest_is_sha256_and_follows_changes(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert volumes.content_digest(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    f.write_bytes(b"abcd")
    assert volumes.content_digest(f) != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _guest(uri, tmp_path):
    pytest.importorskip("libvirt")
    from orchestrator.guest.libvirt import LibvirtGuest
    image = GuestImage(name="debian-6.1", directory=tmp_path, kernel=tmp_path / "vmlinux",
                       initrd=tmp_path / "initrd.img", kernel_release="6.1", kernel_package="p",
                       kernel_package_version="1", client_key=tmp_path / "key", host_key_line="ssh-ed25519 AAAA")
    return LibvirtGuest(image=image, spec=GuestSpec(), artifacts=tmp_path, accel="tcg",
                        disk=tmp_path / "disk.img", connect=uri)


def test_remote_domain_xml_points_at_volumes_and_reads_the_console_through_libvirt(tmp_path):
    guest = _guest("qemu+ssh://root@host/system", tmp_path)
    assert guest.remote and not guest.can_snapshot
    guest._placed = {"kernel": Path("/pool/k"), "initrd": Path("/pool/i"), "disk": Path("/pool/d")}
    root = ET.fromstring(guest._domain_xml())
    assert root.find("os/kernel").text == "/pool/k" and root.find("os/initrd").text == "/pool/i"
    assert root.find("devices/disk/source").get("file") == "/pool/d"
    assert root.find("devices/serial").get("type") == "pty"
    assert str(tmp_path) not in ET.tostring(root, encoding="unicode")  # nothing of this machine's files


def test_local_domain_xml_keeps_our_files(tmp_path):
    guest = _guest("qemu:///system", tmp_path)
    assert not guest.remote and guest.can_snapshot
    root = ET.fromstring(guest._domain_xml())
    assert root.find("os/kernel").text == str(tmp_path / "vmlinux")
    assert root.find("devices/disk/source").get("file") == str(tmp_path / "disk.img")
    assert root.find("devices/serial/source").get("path") == str(tmp_path / "console.log")
