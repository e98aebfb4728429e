"""Pure parts of the guest image builder: no apt, no QEMU."""

import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from orchestrator.guest import images as image
from orchestrator.guest.images import ImageError, apt, bzimage, cpio, elf, modules

REPO = Path(__file__).resolve().parents[2]

APT_NAMES = """
linux-image-6.1.0-9-amd64
linux-image-6.1.0-47-amd64
linux-image-6.1.0-47-amd64-dbg
linux-image-6.1.0-56-amd64
linux-image-6.1.0-56-amd64-dbg
linux-image-6.1.0-56-amd64-unsigned
linux-image-6.1.0-56-cloud-amd64
linux-image-6.1.0-57-cloud-amd64
linux-image-6.1.0-57-rt-amd64
linux-image-6.12-amd64
linux-image-6.12-amd64-signed-template
linux-image-6.12.9+deb12-amd64
linux-image-6.12.100+deb12-amd64
linux-image-6.12.117+deb12-amd64
linux-image-6.12.117+deb12-cloud-amd64
linux-image-6.12.117+deb12-rt-amd64
linux-image-amd64
""".split()


# --------------------------------------------------------------------------- kernel choice


def test_newest_stock_61_kernel_is_chosen_never_cloud_or_rt():
    found = apt.kernel_candidates("linux-image-6.1.0-*-amd64", APT_NAMES)
    assert found == [
        "linux-image-6.1.0-56-amd64",
        "linux-image-6.1.0-47-amd64",
        "linux-image-6.1.0-9-amd64",  # natural order: 9 < 47 < 56
    ]


def test_612_glob_orders_versions_numerically():
    found = apt.kernel_candidates("linux-image-6.12.*+deb12-amd64", APT_NAMES)
    assert found[0] == "linux-image-6.12.117+deb12-amd64"
    assert found[-1] == "linux-image-6.12.9+deb12-amd64"
    assert not any("cloud" in n or "-rt-" in n for n in found)


def test_no_match_is_empty():
    assert apt.kernel_candidates("linux-image-5.10.*-amd64", APT_NAMES) == []


def test_parse_apt_policy():
    text = (
        "linux-image-6.1.0-56-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n"
        "  Version table:\n     6.1.192-2 500\n"
        "busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n"
        "ghost:\n  Installed: (none)\n  Candidate: (none)\n"
    )
    assert apt.parse_apt_policy(text) == {
        "linux-image-6.1.0-56-amd64": "6.1.192-2",
        "busybox-static": "1:1.35.0-4+deb12u1+b1",
        "ghost": None,
    }


class FakeApt:
    def __init__(self, names, versions, updates_help=False):
        self.names, self.versions, self.updates_help = names, versions, updates_help
        self.updates = 0

    def kernel_names(self):
        return self.names

    def candidates(self, names):
        return {n: self.versions.get(n) for n in names}

    def update_once(self):
        if self.updates:
            return False
        self.updates += 1
        if self.updates_help:
            self.versions["linux-image-6.1.0-56-amd64"] = "6.1.192-2"
        return True


BASE_VERSIONS = {p: "1.0" for p in apt.BASE_PACKAGES}


def test_resolve_skips_names_without_a_candidate_version():
    fake = FakeApt(APT_NAMES, {**BASE_VERSIONS, "linux-image-6.1.0-47-amd64": "6.1.170-3"})
    kernel, packages = apt.resolve_packages("debian-6.1", {"kernel": "linux-image-6.1.0-*-amd64"}, fake)
    assert kernel == "linux-image-6.1.0-47-amd64"
    assert packages[kernel] == "6.1.170-3" and set(apt.BASE_PACKAGES) <= set(packages)
    assert fake.updates == 0


def test_resolve_updates_apt_once_then_says_what_is_missing():
    fake = FakeApt(APT_NAMES, dict(BASE_VERSIONS))
    with pytest.raises(ImageError) as err:
        apt.resolve_packages("debian-6.12", {"kernel": "linux-image-6.12.*+deb13-amd64"}, fake)
    assert fake.updates == 1
    assert "image debian-6.12: no package matches linux-image-6.12.*+deb13-amd64" in str(err.value)
    assert "\n" not in str(err.value)


def test_resolve_succeeds_after_the_update():
    fake = FakeApt(APT_NAMES, dict(BASE_VERSIONS), updates_help=True)
    kernel, _ = apt.resolve_packages("debian-6.1", {"kernel": "linux-image-6.1.0-*-amd64"}, fake)
    assert kernel == "linux-image-6.1.0-56-amd64" and fake.updates == 1


# --------------------------------------------------------------------------- modules

FAKE_MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/mm/hwpoison-inject.ko.xz:
"""


def test_parse_modules_dep_normalises_names():
    deps = modules.parse_modules_dep(FAKE_MODULES_DEP)
    assert deps["ext4"] == ["crc16", "mbcache", "jbd2"]
    assert deps["hwpoison_inject"] == []
    assert modules.module_name("kernel/drivers/misc/pvpanic/pvpanic-pci.ko.zst") == "pvpanic_pci"


def test_closure_puts_dependencies_first_and_reports_missing():
    deps = modules.parse_modules_dep(FAKE_MODULES_DEP)
    order, missing = modules.module_closure(
        ["virtio_pci", "virtio-net", "ext4", "pvpanic_pci", "hwpoison-inject"], deps.get
    )
    assert missing == ["pvpanic_pci"]
    assert sorted(order) == sorted(set(order))  # each once
    for module, needs in deps.items():
        if module in order:
            assert all(order.index(d) < order.index(module) for d in needs), module
    assert order[:3] == ["virtio_ring", "virtio", "virtio_pci"]  # requested order kept
    assert set(order) == set(deps)  # everything in the fake file is reachable


def test_closure_of_a_dependency_the_kernel_lacks_is_an_error():
    deps = {"ext4": ["jbd2"]}
    with pytest.raises(ImageError, match="ext4 needs jbd2"):
        modules.module_closure(["ext4"], deps.get)


def test_closure_detects_cycles():
    deps = {"a": ["b"], "b": ["a"]}
    with pytest.raises(ImageError, match="cycle"):
        modules.module_closure(["a"], deps.get)


def test_written_modules_dep_lists_first_loaded_last():
    deps = modules.parse_modules_dep(FAKE_MODULES_DEP)
    # depmod's convention (busybox modprobe loads the list from the end): all indirect
    # dependencies, the one to load first last.
    assert modules.transitive_deps("virtio_net", deps) == ["virtio", "virtio_ring", "net_failover", "failover"]


# --------------------------------------------------------------------------- digest and definitions


def write_repo(tmp_path: Path, init_text: str = "#!/bin/sh\necho hi\n") -> Path:
    (tmp_path / "guest-images").mkdir(exist_ok=True)
    (tmp_path / "guest-images" / "images.yaml").write_text(
        'debian-6.1:\n  kernel: "linux-image-6.1.0-*-amd64"\n'
    )
    (tmp_path / "guest-images" / "init").write_text(init_text)
    return tmp_path


def test_digest_changes_with_the_init_script(tmp_path):
    init = write_repo(tmp_path) / "guest-images" / "init"
    definition = {"kernel": "linux-image-6.1.0-*-amd64"}
    packages = {"linux-image-6.1.0-56-amd64": "6.1.192-2", "busybox-static": "1:1.35.0-4"}
    first = image.image_inputs_digest("debian-6.1", definition, packages, init_script=init)
    assert first == image.image_inputs_digest("debian-6.1", dict(definition), dict(packages), init_script=init)
    init.write_text("#!/bin/sh\necho changed\n")
    assert image.image_inputs_digest("debian-6.1", definition, packages, init_script=init) != first


def test_digest_changes_with_packages_and_definition(tmp_path):
    init = write_repo(tmp_path) / "guest-images" / "init"
    definition = {"kernel": "linux-image-6.1.0-*-amd64"}
    packages = {"linux-image-6.1.0-56-amd64": "6.1.192-2"}
    base = image.image_inputs_digest("debian-6.1", definition, packages, init_script=init)
    newer = {"linux-image-6.1.0-56-amd64": "6.1.192-3"}
    assert image.image_inputs_digest("debian-6.1", definition, newer, init_script=init) != base
    other = {**definition, "modules": ["virtio_net"]}
    assert image.image_inputs_digest("debian-6.1", other, packages, init_script=init) != base
    assert image.image_inputs_digest("debian-6.12", definition, packages, init_script=init) != base


def test_repo_definitions_load():
    defs = image.load_image_definitions(REPO / "guest-images" / "images.yaml")
    assert image.DEFAULT_IMAGE in defs
    assert all(d["kernel"].startswith("linux-image-") for d in defs.values())
    assert (REPO / "guest-images" / "init").is_file()


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: {kernel: linux-image-x, colour: red}\n", "unknown key"),
        ("a: {modules: [ext4]}\n", "'kernel' must be"),
        ("a: {kernel: linux-image-x, boot: uefi}\n", "'boot' must be"),
        ("'bad/name': {kernel: linux-image-x}\n", "names may use"),
        ("[1, 2]\n", "expected a mapping"),
        ("a: [\n", "invalid YAML"),
    ],
)
def test_bad_definitions_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "images.yaml"
    path.write_text(text)
    with pytest.raises(ImageError, match=message) as err:
        image.load_image_definitions(path)
    assert "\n" not in str(err.value)


def test_unknown_image_fails_before_touching_apt(tmp_path):
    repo = write_repo(tmp_path)
    with pytest.raises(ImageError, match="image nope: not defined"):
        image.ensure_image("nope", repo_root=repo, cache_root=tmp_path / "cache")


# --------------------------------------------------------------------------- initramfs and ELF


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    entries, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, rmaj, rmin)


def test_cpio_has_parents_first_modes_and_device_nodes():
    archive = cpio.Cpio()
    archive.file("root/.ssh/authorized_keys", b"ssh-ed25519 AAAA\n", 0o600)
    archive.directory("root/.ssh", 0o700)
    archive.chardev("dev/console", 5, 1)
    archive.symlink("bin/sh", "/bin/busybox")
    data = archive.serialize()
    assert len(data) % 4 == 0
    entries = read_newc(data)
    names = list(entries)
    assert names.index("root") < names.index("root/.ssh") < names.index("root/.ssh/authorized_keys")
    assert entries["root/.ssh"][0] == 0o040700
    assert entries["root/.ssh/authorized_keys"] == (0o100600, b"ssh-ed25519 AAAA\n", 0, 0)
    assert entries["dev/console"][0] & 0o170000 == 0o020000 and entries["dev/console"][2:] == (5, 1)
    assert entries["bin/sh"] == (0o120777, b"/bin/busybox", 0, 0)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="no cpio tool")
def test_cpio_reads_back_with_gnu_cpio():
    archive = cpio.Cpio()
    archive.file("init", b"#!/bin/sh\n", 0o755)
    archive.symlink("bin/sh", "/bin/busybox")
    listing = subprocess.run(["cpio", "-it"], input=archive.serialize(), capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["bin", "bin/sh", "init"]


def test_needed_libraries_match_readelf():
    binary = Path("/bin/true")
    if not binary.exists() or shutil.which("readelf") is None:
        pytest.skip("needs /bin/true and readelf")
    interp, needed = elf.interp_and_needed(binary.read_bytes())
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    expected = [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    assert needed == expected
    assert interp is None or interp.startswith("/")


def fake_vmlinux(pvh: bool = True) -> bytes:
    # ELF64 header, one PT_NOTE program header, one note: what has_pvh_entry looks for.
    desc = struct.pack("<I", 0x1000000)
    note = struct.pack("<III", 4, len(desc), 18 if pvh else 5) + b"Xen\0" + desc
    phoff, notes_at = 64, 64 + 56
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, phoff, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, notes_at, 0, 0, len(note), len(note), 4)
    return header + phdr + note


def fake_bzimage(payload: bytes) -> bytes:
    setup = bytearray(2 * 512)  # setup_sects = 1
    setup[0x1F1] = 1
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<II", setup, 0x248, 16, len(payload))
    return bytes(setup) + bytes(16) + payload + bytes(32)


def test_extract_vmlinux_from_an_xz_bzimage():
    elf = fake_vmlinux()
    trailing_relocs = b"\xaa" * 40  # the real payload appends relocations after the ELF
    raw = elf + trailing_relocs
    payload = lzma.compress(raw, check=lzma.CHECK_CRC32) + struct.pack("<I", len(raw))
    assert bzimage.extract_vmlinux(fake_bzimage(payload)) == elf


def test_extract_vmlinux_refuses_a_kernel_without_pvh():
    elf = fake_vmlinux(pvh=False)
    payload = lzma.compress(elf) + struct.pack("<I", len(elf))
    with pytest.raises(ImageError, match="no PVH entry"):
        bzimage.extract_vmlinux(fake_bzimage(payload))
    with pytest.raises(ImageError, match="not a bzImage"):
        bzimage.extract_vmlinux(bytes(4096))
