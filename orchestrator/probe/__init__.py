"""The guest probe: a static C program built by the host's gcc, cached by source digest."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from orchestrator.plumbing.outcome import HarnessError

# probe.c (the protocol and main loop), memory.c, fuse.c, lock_race.c and
# block_races.c, all including probe.h: one binary from them all.
SOURCE_DIR = Path(__file__).parent
# -s: the symbols are not needed (addresses are printed at run time).
CFLAGS = ["-static", "-s", "-O2", "-Wall", "-Wextra", "-Werror"]
REMOTE_PATH = "/tmp/mce-probe"


def default_compiler() -> str:
    """musl-gcc (Debian's musl-tools, a wrapper around the host's gcc) makes a
    ~60 KiB static binary instead of glibc's ~700 KiB: the SFTP upload to a
    TCG guest is most of the difference in the ssh phase."""
    return "musl-gcc" if shutil.which("musl-gcc") else "gcc"


def c_sources() -> list[Path]:
    """The .c files of the probe, in a stable order."""
    return sorted(SOURCE_DIR.glob("*.c"))


def sources_digest_input() -> bytes:
    """Every source of the probe, headers included, each under its name."""
    data = b""
    for source in sorted([*SOURCE_DIR.glob("*.c"), *SOURCE_DIR.glob("*.h")]):
        content = source.read_bytes()
        data += source.name.encode() + b"\0" + len(content).to_bytes(8, "little") + content
    return data


def build_probe(cache_dir: Path, cc: str | None = None) -> Path:
    cc = cc or default_compiler()
    digest = hashlib.sha256(sources_digest_input() + " ".join([cc, *CFLAGS]).encode()).hexdigest()[:16]
    binary = cache_dir / f"probe-{digest}"
    if binary.is_file():
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".tmp{os.getpid()}")
    try:
        result = subprocess.run([cc, *CFLAGS, "-o", str(partial), *map(str, c_sources())],
                                capture_output=True, text=True)
    except OSError as exc:
        raise HarnessError("image", f"cannot run {cc} to build the probe: {exc.strerror}") from None
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        first = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise HarnessError("image", f"building the probe failed: {first}")
    partial.replace(binary)  # atomic: a half-written binary is never cached
    return binary
