"""Saved guests are keyed on the image build, including its keys."""
from dataclasses import replace
from pathlib import Path

from orchestrator.guest.images import GuestImage
from orchestrator.guest.snapshot import image_build, snapshot_key


def test_a_rebuild_with_new_keys_gets_a_new_saved_guest():
    image = GuestImage(name="local", directory=Path("/c/images/local/198e8e12886edfc4"), kernel=Path("/k"),
                       initrd=Path("/i"), kernel_release="6.12", kernel_package="local", kernel_package_version="x",
                       client_key=Path("/c/k"), host_key_line="ssh-ed25519 AAAA1")

    def key(img):
        return snapshot_key(["qemu", "512"], image_build=image_build(img), probe_build="p")

    assert key(image) == key(replace(image))
    assert key(image) != key(replace(image, host_key_line="ssh-ed25519 AAAA2"))
    assert key(image) != key(replace(image, directory=Path("/c/images/local/0123456789abcdef")))
