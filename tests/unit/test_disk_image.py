"""A user's disk image: partition tables, the kernel in /boot, the cloud-init seed, argv."""
import io
import struct
from pathlib import Path

import pycdlib
import pytest
import yaml

from orchestrator.guest import images
from orchestrator.guest.images import disk as di
from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.scenario import ScenarioError, parse_scenario

BASE = Path(__file__).resolve().parents[2] / "scenarios" / "srao-anon-late-kill.yaml"


def mbr(*entries):
    head = bytearray(1 << 16)
    for i, (kind, start, sectors) in enumerate(entries):
        head[446 + 16 * i + 4] = kind
        struct.pack_into("<II", head, 446 + 16 * i + 8, start, sectors)
    head[510:512] = b"\x55\xaa"
    return bytes(head)


def gpt(*entries):
    head = bytearray(mbr((0xEE, 1, 0xFFFFFFFF)))
    head[512:520] = b"EFI PART"
    struct.pack_into("<QII", head, 512 + 72, 2, 128, 128)
    for i, (number, first, last) in enumerate(entries):
        at = 2 * 512 + (number - 1) * 128
        head[at:at + 16] = bytes(range(1, 17))
        struct.pack_into("<QQ", head, at + 32, first, last)
    return bytes(head)


def test_mbr_partitions_numbered_as_the_guest_kernel_does():
    assert di.partitions(mbr((0x83, 2048, 4096), (0, 0, 0), (0x82, 8192, 100))) == [
        di.Partition(1, 2048 * 512, 4096 * 512), di.Partition(3, 8192 * 512, 100 * 512)]


def test_gpt_partitions_skip_empty_entries():
    # Debian's cloud images: root is partition 1, the BIOS boot and EFI partitions 14 and 15.
    assert di.partitions(gpt((1, 262144, 4194270), (14, 2048, 8191), (15, 8192, 262143))) == [
        di.Partition(1, 262144 * 512, (4194270 - 262144 + 1) * 512),
        di.Partition(14, 2048 * 512, 6144 * 512), di.Partition(15, 8192 * 512, 253952 * 512)]


def test_no_partition_table_and_a_protective_mbr_alone():
    assert di.partitions(bytes(1 << 16)) == []
    assert di.partitions(b"#!/bin/sh\necho this is a text file\n") == []
    assert di.partitions(mbr((0xEE, 1, 0xFFFFFFFF))) == []  # no GPT header behind it


def test_ext_superblock_magic():
    block = bytearray(2048)
    assert not di.is_ext_superblock(bytes(block))
    struct.pack_into("<H", block, 1080, 0xEF53)
    assert di.is_ext_superblock(bytes(block))
    assert not di.is_ext_superblock(bytes(block[:1000]))


def test_pick_kernel_takes_the_newest_release_with_an_initrd():
    listing = "\n".join([
        "/13/040755/0/0/.//", "/2/040755/0/0/..//",
        "/14/100644/0/0/vmlinuz-6.1.0-9-amd64/8247232/", "/15/100644/0/0/initrd.img-6.1.0-9-amd64/64872/",
        "/16/100644/0/0/vmlinuz-6.1.0-10-amd64/8247232/", "/17/100644/0/0/initrd.img-6.1.0-10-amd64/64872/",
        "/18/100644/0/0/vmlinuz-6.5.0-1-amd64/8247232/",            # no initrd: not bootable here
        "/19/120777/0/0/vmlinuz/24/", "/20/120777/0/0/initrd.img/27/",  # symlinks
    ])
    assert di.pick_kernel(listing) == "6.1.0-10-amd64"
    assert di.pick_kernel("/13/040755/0/0/.//\n") is None


def test_root_device_and_command_line():
    assert di.kernel_cmdline(di.root_device(None)) == "root=/dev/vda rw ds=nocloud"
    assert di.root_device(di.Partition(1, 0, 0)) == "/dev/vda1"
    assert "cloud-init=disabled" not in di.kernel_cmdline("/dev/vda")


def test_user_data_pins_the_given_host_key_and_authorizes_only_the_run_key():
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    text = di.user_data("ssh-ed25519 CLIENT", private, "ssh-ed25519 HOST")
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["ssh_authorized_keys"] == ["ssh-ed25519 CLIENT mceorch-client"]
    assert data["ssh_keys"] == {"ed25519_private": private, "ed25519_public": "ssh-ed25519 HOST root@mceguest"}
    assert data["ssh_deletekeys"] is True and data["ssh_pwauth"] is False and data["disable_root"] is False
    # cloud-init 22.4's schema wants a non-empty ssh_genkeytypes; with ssh_keys it generates none anyway.
    assert "ssh_genkeytypes" not in data
    assert set(data) == {"disable_root", "ssh_pwauth", "ssh_deletekeys", "ssh_authorized_keys", "ssh_keys"}


def test_meta_data_names_the_instance():
    assert yaml.safe_load(di.meta_data("mceorch-abc")) == {"instance-id": "mceorch-abc",
                                                            "local-hostname": "mceguest"}


def test_seed_is_an_iso_labelled_cidata_with_the_files_under_their_names(tmp_path):
    seed = tmp_path / "seed.iso"
    di.write_seed_iso(seed, {"meta-data": b"instance-id: x\n", "user-data": b"#cloud-config\n{}\n"})
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, want in (("meta-data", b"instance-id: x\n"), ("user-data", b"#cloud-config\n{}\n")):
            for kw in ({"rr_path": f"/{name}"}, {"joliet_path": f"/{name}"}):
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **kw)
                assert out.getvalue() == want
    finally:
        iso.close()


def test_seed_drive_is_read_only_and_after_the_scratch_disk():
    config = qemu_args.QemuConfig(kernel=Path("/c/vmlinux"), initrd=Path("/c/initrd"), console_log=Path("/a/c.log"),
                                  qmp_fd=7, ssh_port=2222, root_disk=Path("/t/o/root.qcow2"),
                                  root_cmdline="root=/dev/vda rw ds=nocloud", disk=Path("/t/d/disk.img"),
                                  seed=Path("/t/s/seed.iso"))
    drives = [a for a in qemu_args.build_argv(config) if "if=none" in a]
    assert [d.split(",id=")[1].split(",")[0] for d in drives] == ["root0", "disk0", "seed0"]
    assert drives[2] == "file=/t/s/seed.iso,if=none,id=seed0,format=raw,readonly=on"
    # The seed's folder is per run: not part of what shapes a saved guest.
    assert "seed.iso" in " ".join(qemu_args.state_argv(config)) and "/t/s/" not in " ".join(qemu_args.state_argv(config))


def test_scenario_disk_image_is_relative_to_the_scenario_file(tmp_path):
    (tmp_path / "my.qcow2").write_bytes(b"")
    text = BASE.read_text().replace("guest:", "guest:\n  disk_image: my.qcow2", 1)
    assert "disk_image" in text
    scenario = parse_scenario(text, tmp_path / "srao-anon-late-kill.yaml")
    assert scenario.guest.disk_image == tmp_path / "my.qcow2"
    assert parse_scenario(BASE.read_text(), BASE).guest.disk_image is None


def test_scenario_disk_image_that_is_missing_is_one_line_naming_the_key(tmp_path):
    text = BASE.read_text().replace("guest:", "guest:\n  disk_image: nowhere.qcow2", 1)
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, tmp_path / "srao-anon-late-kill.yaml")
    message = str(caught.value)
    assert "\n" not in message and "guest.disk_image" in message and "nowhere.qcow2: no such file" in message
    assert message.startswith(f"{tmp_path / 'srao-anon-late-kill.yaml'}:")


def test_a_text_file_is_not_a_disk_image(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n" * 1000)
    with pytest.raises(images.ImageError, match=r"not a disk image with a Linux root file system"):
        di.prepare_disk_image(text, cache_root=tmp_path / "cache", workdir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_cli_disk_image_refuses_image_and_missing_files(tmp_path, capsys):
    from orchestrator.cli import main
    disk = tmp_path / "d.qcow2"
    assert main(["run", "--disk-image", str(disk), "srao-anon-late-kill"]) == 2
    assert f"--disk-image {disk}: no such file" in capsys.readouterr().err
    disk.write_bytes(b"")
    assert main(["run", "--disk-image", str(disk), "--image", "debian-6.12", "srao-anon-late-kill"]) == 2
    assert "--disk-image: not with --image" in capsys.readouterr().err


def test_repro_names_the_disk_image_by_its_absolute_path_instead_of_an_image(tmp_path):
    from orchestrator.report import repro
    argv = repro.run_argv(scenario_file="s.yaml", image="debian-6.1", kernel=None, modules=None, append="",
                          accel=None, snapshot=False, disk_image=tmp_path / "d.qcow2")
    assert argv == ["run", "s.yaml", "--disk-image", str(tmp_path / "d.qcow2"), "--cold"]


def partitioned_disk(tmp_path):
    """A raw disk with a GPT whose partition 2 holds an ext4 file system with a /boot."""
    import subprocess
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(b"not a real bzImage")
    (tree / "boot" / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(40 << 20)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-E", "offset=2097152", "-d", str(tree), "-F", str(disk), "30M"],
                   check=True)
    with disk.open("r+b") as f:
        f.write(gpt((1, 2048, 4095), (2, 4096, 4096 + 61439)))  # partition 1: no file system
    return disk


def test_the_disks_own_kernel_is_read_from_a_gpt_partition_without_a_mount(tmp_path):
    (tmp_path / "work").mkdir(mode=0o700)  # the runner's private_workdir()
    image = di.prepare_disk_image(partitioned_disk(tmp_path), cache_root=tmp_path / "cache",
                                  workdir=tmp_path / "work")
    assert image.kernel_release == "6.1.0-9-amd64" and image.disk_format == "raw"
    assert image.kernel.read_bytes() == b"not a real bzImage" and image.initrd.read_bytes() == b"initrd"
    assert image.kernel_cmdline == "root=/dev/vda2 rw ds=nocloud"
    assert image.seed == tmp_path / "work" / "seed.iso" and image.per_run_keys
    # Cached by the disk's identity: a second run reads nothing from the disk.
    assert sorted(p.name for p in (tmp_path / "cache" / "disk-images").iterdir()) == [image.kernel.parent.name]


def test_keys_are_per_run_and_kept_with_the_disk_for_snapshot(tmp_path):
    disk = partitioned_disk(tmp_path)
    for name in ("w1", "w2", "s1", "s2"):
        (tmp_path / name).mkdir(mode=0o700)
    runs = [di.prepare_disk_image(disk, cache_root=tmp_path / "cache", workdir=tmp_path / f"w{i}") for i in (1, 2)]
    assert runs[0].host_key_line != runs[1].host_key_line
    assert runs[0].client_key.read_text() != runs[1].client_key.read_text()
    saved = [di.prepare_disk_image(disk, cache_root=tmp_path / "cache", workdir=tmp_path / f"s{i}", saved_keys=True)
             for i in (1, 2)]
    assert saved[0].host_key_line == saved[1].host_key_line and saved[0].seed == saved[1].seed
    assert not saved[0].per_run_keys and saved[0].directory.parent == saved[0].kernel.parent
    assert oct(saved[0].directory.stat().st_mode & 0o777) == "0o700"  # the seed holds the host's private key
    assert list((tmp_path / "s1").iterdir()) == []  # nothing per run


def test_cloud_init_watch_says_no_sshd_only_once_cloud_init_finished_long_enough_ago(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from orchestrator.guest import readiness
    console = tmp_path / "console.log"
    console.write_text("[   40.6] cloud-init[305]: Cloud-init v. 22.4.2 running 'init-local' at Thu. Up 40.03 seconds.\n")
    guest = SimpleNamespace(console_log=console, image=SimpleNamespace(source=Path("/x/my.qcow2"),
                                                                         disk=Path("/x/my.qcow2")))
    watch = readiness.CloudInitWatch(guest)
    assert watch.no_sshd() is None and watch.started
    with console.open("a") as f:
        f.write("[  105.190366] cloud-init[401]: Cloud-init v. 22.4.2 finished at Thu, 26 Nov 2026 16:40:19 +0000. "
                "Datasource DataSourceNoCloud [seed=cmdline,/dev/vdb][dsmode=local].  Up 105.05 seconds\n")
    assert watch.no_sshd() is None  # just finished: sshd may still be starting
    monkeypatch.setattr(readiness, "SSHD_AFTER_CLOUD_INIT_S", 0.0)
    why = watch.no_sshd()
    assert why.startswith("cloud-init finished (guest up 105.05 s) but no SSH server answered") and "my.qcow2" in why


def test_cli_disk_image_is_for_the_qemu_backend_only(tmp_path, capsys):
    from orchestrator.cli import main
    disk = tmp_path / "d.qcow2"
    disk.write_bytes(b"")
    assert main(["run", "--backend", "libvirt", "--disk-image", str(disk), "srao-anon-late-kill"]) == 2
    assert "runs on the QEMU backend only" in capsys.readouterr().err


def qemu_img(*args):
    import subprocess
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_a_qcow2_with_a_backing_file_nobody_named_is_refused_in_one_line(tmp_path, capsys):
    # The review's case: a root-only raw file as the backing file of a user's qcow2.
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"root's secret\n" * 4096)
    secret.chmod(0o600)
    disk = tmp_path / "user.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(disk))
    with pytest.raises(images.ImageError) as caught:
        di.disk_format(disk)
    message = str(caught.value)
    assert "\n" not in message and f"backing file {secret}" in message and f"--allow-backing {secret}" in message
    with pytest.raises(images.ImageError, match="backing file"):
        di.prepare_disk_image(disk, cache_root=tmp_path / "cache", workdir=tmp_path / "work")
    assert not (tmp_path / "cache").exists()  # nothing was read out of it
    # Through the command line: refused before any guest, exit 2, one line.
    from orchestrator.cli import main
    assert main(["run", "--disk-image", str(disk), "srao-anon-late-kill"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-backing" in err
    # Named by the user: allowed.
    assert di.disk_format(disk, allow_backing=[secret]) == "qcow2"


def test_every_layer_of_an_allowed_chain_is_checked(tmp_path):
    base, middle, top = tmp_path / "base.raw", tmp_path / "middle.qcow2", tmp_path / "top.qcow2"
    base.write_bytes(bytes(1 << 20))
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(middle))
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(middle), str(top))
    with pytest.raises(images.ImageError, match=f"layer {middle}.*backing file {base}"):
        di.disk_format(top, allow_backing=[middle])  # the middle one allowed, not what it stands on
    assert di.disk_format(top, allow_backing=[middle, base]) == "qcow2"
    # A layer of a format the harness does not read, even when named.
    odd, over = tmp_path / "odd.vmdk", tmp_path / "over.qcow2"
    qemu_img("create", "-q", "-f", "vmdk", str(odd), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-F", "vmdk", "-b", str(odd), str(over))
    with pytest.raises(images.ImageError, match=f"layer {odd}\\): format vmdk"):
        di.disk_format(over, allow_backing=[odd])


def test_a_qcow2_keeping_its_data_in_another_file_is_refused(tmp_path):
    data, disk = tmp_path / "data.raw", tmp_path / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={data}", str(disk), "1M")
    with pytest.raises(images.ImageError, match="keeps its data in another file"):
        di.disk_format(disk)


def test_repro_passes_the_allowed_backing_files_on(tmp_path):
    from orchestrator.report import repro
    argv = repro.run_argv(scenario_file="s.yaml", image=None, kernel=None, modules=None, append="", accel=None,
                          snapshot=False, disk_image=tmp_path / "d.qcow2", allow_backing=(tmp_path / "b.raw",))
    assert argv == ["run", "s.yaml", "--disk-image", str(tmp_path / "d.qcow2"), "--allow-backing", str(tmp_path / "b.raw"),
                    "--cold"]
