"""The guest's RAM as its own QEMU lays it out, around the below-4G split points
of pc and q35 and the legacy ROM windows below 1 MiB.

Each guest is only launched (QEMU paused, its map read, then quit): no boot."""
import pytest

from orchestrator.guest import memory_map

from orchestrator.guest import new_guest

from orchestrator.guest.images import ensure_image

from orchestrator.guest.libvirt.daemons import ensure_running

from orchestrator.guest.qemu import argv as qemu_args

from orchestrator.inject import mce

from orchestrator.plumbing.deadline import Deadline

from orchestrator.scenario import GuestSpec


from .conftest import REPO, orchestrator

GIB = 1 << 30
SRAO = mce.PRESETS["srao"]
# (machine, MiB, RAM that must be there, addresses that must not be RAM)
LAYOUTS = [
    ("pc", 512, [(0x100000, 512 << 20)], [0xC0000, 0xFF000, 512 << 20]),
    ("pc", 3583, [(0x100000, 3583 << 20)], [3583 << 20, 4 * GIB]),
    # At 3.5 GiB pc keeps 3 GiB below 4 GiB (gigabyte alignment), not 3.5 GiB.
    ("pc", 3584, [(0x100000, 3 * GIB), (4 * GIB, 4 * GIB + 512 * (1 << 20))], [3 * GIB, 0xDFFFF000]),
    ("pc", 4096, [(0x100000, 3 * GIB), (4 * GIB, 5 * GIB)], [3 * GIB, 5 * GIB]),
    ("q35", 2815, [(0x100000, 2815 << 20)], [2815 << 20, 4 * GIB]),
    ("q35", 2816, [(0x100000, 2 * GIB), (4 * GIB, 4 * GIB + (768 << 20))], [2 * GIB, 0xAFFFF000]),
    ("q35", 4096, [(0x100000, 2 * GIB), (4 * GIB, 6 * GIB)], [2 * GIB, 6 * GIB]),
]


@pytest.fixture(scope="module")
def image():
    return ensure_image("debian-6.1", repo_root=REPO)


def guest_limits(image, tmp_path, machine, mib, backend="qemu"):
    spec = GuestSpec(memory_mib=mib, machine=machine)
    with new_guest(backend, image=image, spec=spec, artifacts=tmp_path) as guest:
        guest.launch(Deadline(60, "boot"))
        return guest.limits


@pytest.fixture(params=["qemu", "libvirt"])
def backend(request):
    if request.param == "libvirt":
        ensure_running()  # virtlogd and libvirtd, started here if needed
    return request.param


@pytest.mark.parametrize("machine, mib, ram, holes", LAYOUTS, ids=[f"{m}-{s}" for m, s, _, _ in LAYOUTS])
def test_every_ram_range_accepted_and_holes_refused(image, tmp_path, backend, machine, mib, ram, holes):
    limits = guest_limits(image, tmp_path, machine, mib, backend)
    for start, end in ram:
        for address in (start, end - 0x1000):
            mce.validate(SRAO, cpu=0, address=address, limits=limits)
    for address in holes:
        with pytest.raises(mce.MceError, match="outside guest RAM"):
            mce.validate(SRAO, cpu=0, address=address, limits=limits)
    assert sum(hi - lo for lo, hi in limits.ram_ranges) <= mib << 20
    # The early check's stand-in QEMU (same machine, size, firmware) sees the same map.
    firmware = qemu_args.default_firmware() if qemu_args.host_accel() == "tcg" else None
    assert memory_map.standin_ram_ranges("qemu-system-x86_64", machine, mib, firmware) == limits.ram_ranges


SCENARIO = """description: an SRAO at a fixed address
inject:
  preset: srao
  address: {address:#x}
expect:
  guest: alive
  kernel_log: ["Memory failure: {{injected_pfn:#x}}: memory outside kernel control"]
"""


@pytest.mark.parametrize("address", [0xC0000, 0xF0000])
def test_address_in_a_legacy_hole_is_one_line_before_anything_starts(tmp_path, address):
    scenario = tmp_path / "hole.yaml"
    scenario.write_text(SCENARIO.format(address=address))
    proc = orchestrator("run", str(scenario), results=tmp_path / "results")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"hole.yaml:4: inject.address: {address:#x} is not RAM in a pc 512 MiB guest" \
        in lines[0], proc.stderr
    assert not (tmp_path / "results" / "latest").exists()
