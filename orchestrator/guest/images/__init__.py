"""The guest image: a kernel (a Debian package, or one the user built) plus a small
busybox + dropbear initramfs from Debian packages, cached by the digest of its inputs.

One module per job: definitions (images.yaml), apt (package resolution and .debs),
kernels (kernel sources behind one interface), elf and bzimage (reading kernels and
programs), modules (closure and load order), cpio (the initramfs), rootfs (unpacked
packages), keys (SSH keys), build (assembling one image), cache (ensure_image).
"""
from orchestrator.guest.images.cache import LOCAL_IMAGE, GuestImage, ensure_image, image_inputs_digest
from orchestrator.guest.images.cpio import Cpio
from orchestrator.guest.images.definitions import DEFAULT_IMAGE, load_image_definitions
from orchestrator.guest.images.errors import ImageError

# Lines the guest's /init prints on the serial console (see guest-images/init).
READY_MARKER = "MCEORCH-READY"  # dropbear has been started
ERROR_MARKER = "MCEORCH-ERROR"  # a boot step failed; the rest of the line says which

# Fixed by QEMU's user-mode network; the init script uses the same values.
GUEST_IP = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
GUEST_SSH_PORT = 22

__all__ = ["DEFAULT_IMAGE", "ERROR_MARKER", "GUEST_GATEWAY", "GUEST_IP", "GUEST_SSH_PORT", "LOCAL_IMAGE",
           "READY_MARKER", "Cpio", "GuestImage", "ImageError", "ensure_image", "image_inputs_digest",
           "load_image_definitions"]
