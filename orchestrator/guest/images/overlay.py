"""Copy-on-write overlays of disk images: a run writes to its overlay, never to the image."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


class OverlayError(Exception):
    """One line: why the overlay could not be made."""


def overlay_argv(base: Path, base_format: str, overlay: Path) -> list[str]:
    """qemu-img command making a copy-on-write qcow2 overlay of `base` (never written to)."""
    return ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(Path(base).resolve()),
            str(overlay)]


class DiskOverlay:
    """A private temp folder with one overlay of a disk image; remove() deletes it all."""

    def __init__(self, base: Path, base_format: str = "qcow2", copy_of: Path | None = None) -> None:
        """`copy_of`: an overlay of `base` saved with a guest's state, copied instead of a new one."""
        self.folder = Path(tempfile.mkdtemp(prefix="mce-overlay-"))
        self.path = self.folder / "root.qcow2"
        if copy_of is not None:
            copied = subprocess.run(["cp", "--sparse=always", str(copy_of), str(self.path)], capture_output=True,
                                    text=True)
            if copied.returncode != 0:
                self.remove()
                raise OverlayError(f"copy of the saved overlay {copy_of}: "
                                   f"{(copied.stderr.strip() or 'no output').splitlines()[-1]}")
            return
        try:
            made = subprocess.run(overlay_argv(base, base_format, self.path), capture_output=True, text=True)
        except FileNotFoundError:
            self.remove()
            raise OverlayError("qemu-img not found (make setup installs qemu-utils)") from None
        if made.returncode != 0:
            self.remove()
            lines = made.stderr.strip().splitlines() or ["no output"]
            raise OverlayError(f"overlay of {base}: {lines[-1]}")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
