"""The guest probe: a static C program built by the host's gcc, cached by source digest."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from orchestrator.outcome import HarnessError

SOURCE = Path(__file__).with_name("probe.c")
CFLAGS = ["-static", "-O2", "-Wall", "-Wextra", "-Werror"]
REMOTE_PATH = "/tmp/mce-probe"


def build_probe(cache_dir: Path, cc: str = "gcc") -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *CFLAGS]).encode()).hexdigest()[:16]
    binary = cache_dir / f"probe-{digest}"
    if binary.is_file():
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".tmp{os.getpid()}")
    try:
        result = subprocess.run([cc, *CFLAGS, "-o", str(partial), str(SOURCE)],
                                capture_output=True, text=True)
    except OSError as exc:
        raise HarnessError("image", f"cannot run {cc} to build the probe: {exc.strerror}") from None
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        first = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise HarnessError("image", f"building the probe failed: {first}")
    partial.replace(binary)  # atomic: a half-written binary is never cached
    return binary
