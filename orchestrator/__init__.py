"""Test orchestrator for guest machine-check handling.

Boots QEMU guests, injects machine checks through the QEMU monitor at guest
physical addresses, and checks over SSH that the guest kernel's HWPOISON
handling did what a YAML scenario expects.
"""

__version__ = "0.1.0"
