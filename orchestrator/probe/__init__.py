"""The guest probe: a static C program built by the host's gcc, cached by source digest."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from orchestrator.plumbing.outcome import HarnessError

SOURCE = Path(__file__).with_name("probe.c")
# -s: the symbols are not needed (addresses are printed at run time).
CFLAGS = ["-static", "-s", "-O2", "-Wall", "-Wextra", "-Werror"]
REMOTE_PATH = "/tmp/mce-probe"


def default_compiler() -> str:
    """musl-gcc (Debian's musl-tools, a wrapper around the host's gcc) makes a
    ~60 KiB static binary instead of glibc's ~700 KiB: the SFTP upload to a
    TCG guest is most of the difference in the ssh phase."""
    return "musl-gcc" if shutil.which("musl-gcc") else "gcc"


def build_probe(cache_dir: Path, cc: str | None = None) -> Path:
    cc = cc or default_compiler()
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
