"""The harness on a real guest: loopback only, keys private, no key material in artifacts."""
import io
import os
import stat
from pathlib import Path

from orchestrator.guest.images import ensure_image
from orchestrator.plumbing.outcome import Outcome
from orchestrator.report import ConsoleReporter
from orchestrator.runner import RunOptions, run_scenario
from orchestrator.scenario import load_scenario

from .conftest import REPO


def listening_addresses(pid: int) -> list[str]:
    """Local addresses of the TCP sockets `pid` listens on (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                address = local.split(":")[0]
                found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)) if width == 8 else address)
    return found


def test_loopback_only_private_keys_and_clean_artifacts(tmp_path):
    seen = {}

    def inspect(phase, ctx):
        if phase == "locate":
            seen["listening"] = listening_addresses(ctx.guest.pid)

    result = run_scenario(load_scenario(REPO / "scenarios" / "srao-anon-late-kill.yaml"), tmp_path,
                          RunOptions(hook=inspect), ConsoleReporter(io.StringIO()))
    assert result.outcome == Outcome.PASS, result.reasons
    assert seen["listening"] and set(seen["listening"]) == {"127.0.0.1"}

    image = ensure_image("debian-6.1", repo_root=REPO)
    for path, mode in ((image.client_key, 0o600), (image.client_key.parent, 0o700), (image.directory, 0o700),
                       (image.initrd, 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path

    key_text = image.client_key.read_text()
    key_body = "".join(line for line in key_text.splitlines() if "PRIVATE KEY" not in line)
    for artifact in result.artifacts.rglob("*"):
        if not artifact.is_file():  # the scenario/ folder (its copy of the scenario)
            continue
        content = artifact.read_bytes().decode(errors="replace")
        assert "PRIVATE KEY" not in content, artifact
        assert key_body[:40] not in content, artifact
