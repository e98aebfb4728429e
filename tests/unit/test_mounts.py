"""A build folder with file systems still mounted in it is removed without walking into them."""
import os
import subprocess

import pytest

from orchestrator.plumbing.mounts import mount_points_under, remove_tree

# As a killed mmdebstrap leaves it (seen on this machine), with a path holding a space.
MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
410 22 0:5 / /c/d/.build-x/root/proc ro,relatime - proc proc ro
411 22 0:21 / /c/d/.build-x/root/sys ro,nosuid,nodev,noexec,relatime - sysfs sys ro
412 22 0:45 / /c/d/.build-x/root/dev/pts rw,nosuid,noexec,relatime - devpts none rw,ptmxmode=666
413 22 0:46 / /c/d/.build-x/root/dev/shm rw,relatime - tmpfs tmpfs rw
414 22 0:47 / /c/d/.build-x/root/my\\040dir rw - tmpfs tmpfs rw
415 22 0:48 / /c/d/.build-xy/root/proc ro - proc proc ro
"""


def test_the_mounts_below_a_folder_deepest_first():
    assert mount_points_under(MOUNTINFO, "/c/d/.build-x") == [
        "/c/d/.build-x/root/dev/shm", "/c/d/.build-x/root/dev/pts", "/c/d/.build-x/root/sys",
        "/c/d/.build-x/root/proc", "/c/d/.build-x/root/my dir"]
    assert mount_points_under(MOUNTINFO, "/c/d/.build-xy/") == ["/c/d/.build-xy/root/proc"]
    assert mount_points_under(MOUNTINFO, "/c/e") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root (as make test runs)")
def test_a_bind_mount_left_in_a_build_folder_is_detached_not_emptied(tmp_path):
    host = tmp_path / "host-data"
    host.mkdir()
    (host / "keep").write_text("not the build's\n")
    build = tmp_path / ".build-killed"
    (build / "root" / "dev" / "shm").mkdir(parents=True)
    (build / "root" / "data").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(build / "root" / "dev" / "shm")], check=True)
    subprocess.run(["mount", "--bind", str(host), str(build / "root" / "data")], check=True)
    try:
        detached = remove_tree(build)
    finally:
        for point in (build / "root" / "data", build / "root" / "dev" / "shm"):
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True)
    assert sorted(detached) == [str(build / "root" / "data"), str(build / "root" / "dev" / "shm")]
    assert not build.exists()
    assert (host / "keep").read_text() == "not the build's\n"  # shutil.rmtree alone deleted it
    assert str(build) not in open("/proc/self/mountinfo").read()
