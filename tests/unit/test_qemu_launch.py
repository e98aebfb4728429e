"""A QEMU that exits while the harness connects to its monitor: the error says so, whichever
of the two the harness saw first (a fake QEMU, a real process; the real case with a broken
saved state is tests/integration/test_snapshot.py)."""
import sys
import textwrap

import pytest

from orchestrator.guest.qemu import QemuGuest
from orchestrator.plumbing.deadline import Deadline
from orchestrator.guest.images import GuestImage
from orchestrator.plumbing.outcome import HarnessError
from orchestrator.scenario import GuestSpec

# Both orders of the race: QEMU's exit seen before the QMP connect fails ("exit"), and the
# QMP socket closed well before QEMU exits, so the connect fails first ("close-then-exit").
FAKE_QEMU = textwrap.dedent("""\
    #!{python}
    import os, sys, time
    if "{order}" == "close-then-exit":
        os.closerange(3, 4096)  # the QMP, HMP and console sockets: the connect fails now
        time.sleep(0.5)
    sys.stderr.write("qemu-system-x86_64: Not a migration stream\\n")
    sys.exit(1)
""")


def _guest(tmp_path, order: str, incoming: bool) -> QemuGuest:
    fake = tmp_path / "qemu"
    fake.write_text(FAKE_QEMU.format(python=sys.executable, order=order))
    fake.chmod(0o755)
    image = GuestImage(name="debian-6.1", directory=tmp_path, kernel=tmp_path / "vmlinux", initrd=tmp_path / "initrd",
                       kernel_release="6.1.0-56-amd64", kernel_package="linux-image-6.1.0-56-amd64",
                       kernel_package_version="6.1.192-2", client_key=tmp_path / "key",
                       host_key_line="ssh-ed25519 AAAA")
    artifacts = tmp_path / "run"
    artifacts.mkdir()
    return QemuGuest(image=image, spec=GuestSpec(), artifacts=artifacts, accel="tcg", qemu_binary=str(fake),
                     incoming=tmp_path / "x.state" if incoming else None)


@pytest.mark.parametrize("order", ["exit", "close-then-exit"])
def test_a_restore_whose_qemu_exits_is_qemu_exited_whatever_came_first(tmp_path, order):
    guest = _guest(tmp_path, order, incoming=True)
    with pytest.raises(HarnessError) as caught:
        guest.launch(Deadline(10, "boot"))
    message = caught.value.message
    assert message.startswith("restoring the guest failed: QEMU exited with code 1: "), message
    assert "Not a migration stream" in message and "command line: " in message
    assert not guest.is_running()


@pytest.mark.parametrize("order", ["exit", "close-then-exit"])
def test_a_boot_whose_qemu_exits_names_its_exit_code(tmp_path, order):
    guest = _guest(tmp_path, order, incoming=False)
    with pytest.raises(HarnessError) as caught:
        guest.launch(Deadline(10, "boot"))
    assert caught.value.message.startswith("QEMU exited with code 1: "), caught.value.message
