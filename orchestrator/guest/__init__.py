"""Guest backends: each starts a guest, gives monitor access, and always cleans up.

The pipeline gets its guest from new_guest() and talks to it only through
orchestrator.guest.base.Guest.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.guest.base import Guest

BACKENDS = ("qemu", "libvirt")
DEFAULT_BACKEND = "qemu"


def new_guest(backend: str, connect: str | None = None, attach=None, **config) -> Guest:
    """An unlaunched guest of that backend; `config` as QemuGuest takes it;
    `connect` is the libvirt URI (default qemu:///system); `attach` is
    (domain name, AttachConfig) for a domain the user already runs."""
    if attach is not None:
        from orchestrator.guest.libvirt import AttachedGuest
        domain, attach_config = attach
        return AttachedGuest(domain=domain, attach=attach_config, connect=connect, **config)
    if backend == "qemu":
        from orchestrator.guest.qemu import QemuGuest
        return QemuGuest(**config)
    if backend == "libvirt":
        from orchestrator.guest.libvirt import LibvirtGuest
        return LibvirtGuest(connect=connect, **config)
    raise ValueError(f"unknown backend {backend!r} (one of: {', '.join(BACKENDS)})")
