"""Guest backends: each starts a guest, gives monitor access, and always cleans up.

The pipeline gets its guest from new_guest() and talks to it only through
orchestrator.backends.base.Guest.
"""
from __future__ import annotations

from orchestrator.backends.base import Guest

BACKENDS = ("qemu",)
DEFAULT_BACKEND = "qemu"


def new_guest(backend: str, **config) -> Guest:
    """An unlaunched guest of that backend; `config` as QemuGuest takes it."""
    if backend == "qemu":
        from orchestrator.backends.qemu import QemuGuest
        return QemuGuest(**config)
    raise ValueError(f"unknown backend {backend!r} (one of: {', '.join(BACKENDS)})")
