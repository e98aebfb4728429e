"""Removing a build folder that may still have file systems mounted in it.

mmdebstrap (--mode=root) mounts proc, sys, devpts and a tmpfs inside the root it
builds and unmounts them when it ends; a build killed with its whole process
tree (a CI job's timeout, `kill` of the process group) leaves them mounted. A
plain shutil.rmtree of that folder then walks, as root, into the host's /proc
and /sys and through any bind mount into what it shows, and the mounts stay for
good. remove_tree() detaches every mount below the folder first.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as \040, \011, \012, \134.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points_under(mountinfo: str, folder: str) -> list[str]:
    """The mount points at or below `folder` (an absolute, resolved path) in the text of
    /proc/self/mountinfo, deepest first (the order they can be unmounted in)."""
    folder = folder.rstrip("/") or "/"
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point == folder or point.startswith(folder + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), p), reverse=True)


def remove_tree(path: Path) -> list[str]:
    """shutil.rmtree(path, ignore_errors=True), after detaching (umount --lazy) every
    mount at or below it; returns the mount points it detached."""
    if not path.exists():
        return []
    real = os.path.realpath(path)
    try:
        points = mount_points_under(MOUNTINFO.read_text(), real)
    except OSError:
        points = []
    detached = []
    for point in points:
        if subprocess.run(["umount", "--lazy", point], capture_output=True).returncode == 0:
            detached.append(point)
    if len(detached) != len(points):
        # Never walk into a file system still mounted here: leave the folder as it is.
        return detached
    shutil.rmtree(path, ignore_errors=True)
    return detached
