"""The image layer's one error type, and running host tools with a one-line failure."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


class ImageError(Exception):
    """A one-line message naming the step that failed."""


def one_line(text: str) -> str:
    # apt and friends print warnings first; the last E:/error line is the useful one.
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith(("E:", "error", "Error"))]
    return (errors or lines or ["no output"])[-1]


def run(cmd: Sequence[str], *, step: str, input: bytes | None = None, text: bool = True, **kw):
    env = dict(os.environ, LC_ALL="C")  # parse English output
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, env=env, **kw)
    except FileNotFoundError:
        raise ImageError(f"{step}: {cmd[0]} not found") from None
    if proc.returncode != 0:
        raise ImageError(f"{step}: {one_line(proc.stderr.decode(errors='replace'))}")
    return proc.stdout.decode() if text else proc.stdout
