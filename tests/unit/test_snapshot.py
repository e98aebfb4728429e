"""The saved-guest key and store: pure parts and files, no guest."""
import fcntl
import hashlib
import time
from pathlib import Path

import pytest

from orchestrator.guest import snapshot
from orchestrator.guest.images import GuestImage
from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.guest.qemu import QemuGuest, file_digest
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError
from orchestrator.scenario import GuestSpec

BUILDS = dict(image_build="0123abcd 6.1.0-56-amd64", probe_build="probe-aaaa", qemu="QEMU 7.2.0",
              firmware="f00d")


def config(**kw):
    base = dict(kernel=Path("/cache/debian-6.1/0123abcd/vmlinux"), initrd=Path("/cache/debian-6.1/0123abcd/initrd"),
                console_log=Path("/results/run/x/console.log"), qmp_fd=7, ssh_port=2222,
                firmware=Path("/usr/share/qemu/qboot.rom"))
    return qemu_args.QemuConfig(**(base | kw))


def key(c=None, **builds):
    """The key QemuGuest.state_identity and snapshot.guest_key make of this configuration and these builds."""
    b = BUILDS | builds
    identity = qemu_args.state_argv(c or config()) + [f"firmware={b['firmware']}", f"qemu={b['qemu']}"]
    return snapshot.snapshot_key(identity, image_build=b["image_build"], probe_build=b["probe_build"])


def test_per_run_parts_do_not_change_the_key():
    assert key(config(qmp_fd=9, ssh_port=40000, console_log=Path("/elsewhere/console.log"),
                      incoming=Path("/s/x.state"), console_append=True)) == key()


@pytest.mark.parametrize("change", [
    dict(memory_mib=1024), dict(vcpus=2), dict(machine="q35"), dict(accel="kvm"),
    dict(extra_cmdline="nokaslr"), dict(firmware=None), dict(qemu_binary="/opt/qemu/bin/qemu-system-x86_64"),
    dict(kernel=Path("/cache/debian-6.1/0123abcd/bzImage")),
])
def test_every_part_of_the_guest_config_changes_the_key(change):
    assert key(config(**change)) != key()


@pytest.mark.parametrize("build", ["image_build", "probe_build", "qemu", "firmware"])
def test_every_build_changes_the_key(build):
    assert key(**{build: BUILDS[build] + "x"}) != key()


def test_the_saving_procedure_changes_the_key():
    identity = qemu_args.state_argv(config())
    builds = dict(image_build="i", probe_build="p")
    assert snapshot.snapshot_key(identity, **builds, procedure="a") != snapshot.snapshot_key(identity, **builds,
                                                                                          procedure="b")


def test_harness_kernel_cmdline_cpu_model_and_devices_change_the_key(monkeypatch):
    before = key()
    monkeypatch.setattr(qemu_args, "KERNEL_CMDLINE", qemu_args.KERNEL_CMDLINE + " mitigations=off")
    assert key() != before
    monkeypatch.undo()
    monkeypatch.setattr(qemu_args, "TCG_CPU_MODEL", "Cascadelake-Server")
    assert key() != before
    monkeypatch.undo()
    build = qemu_args.build_argv
    monkeypatch.setattr(qemu_args, "build_argv", lambda c: build(c) + ["-device", "virtio-rng-pci"])
    assert key() != before


def test_firmware_digest_follows_the_file(tmp_path):
    rom = tmp_path / "bios.rom"
    rom.write_bytes(b"one")
    first = file_digest(rom)
    rom.write_bytes(b"two")
    assert file_digest(rom) != first and file_digest(None) == "none"


def test_the_qemu_guest_identity_is_its_argv_without_per_run_parts(tmp_path):
    image = GuestImage(name="debian-6.1", directory=tmp_path / "0123abcd", kernel=tmp_path / "0123abcd" / "vmlinux",
                       initrd=tmp_path / "0123abcd" / "initrd", kernel_release="6.1.0-56-amd64",
                       kernel_package="linux-image-6.1.0-56-amd64", kernel_package_version="6.1.192-2",
                       client_key=tmp_path / "key", host_key_line="ssh-ed25519 AAAA")
    one = QemuGuest(image=image, spec=GuestSpec(), artifacts=tmp_path / "a", accel="tcg")
    two = QemuGuest(image=image, spec=GuestSpec(), artifacts=tmp_path / "b", accel="tcg",
                    incoming=tmp_path / "x.state")
    assert one.state_identity() == two.state_identity()
    assert "-append" in one.state_identity() and any(p.startswith("qemu=QEMU emulator") for p in one.state_identity())
    assert QemuGuest(image=image, spec=GuestSpec(vcpus=2), artifacts=tmp_path / "a",
                     accel="tcg").state_identity() != one.state_identity()


def test_a_half_saved_guest_is_never_found_and_discard_leaves_nothing(tmp_path):
    store = snapshot.SnapshotStore(tmp_path)
    saved = store.paths("debian-6.1", "k")
    saved.state.write_bytes(b"QEVM")
    assert store.find("debian-6.1", "k") is None  # no console nor digest beside it
    saved.console.write_text("boot\n")
    assert store.find("debian-6.1", "k") is None
    saved.digest.write_text(hashlib.sha256(b"QEVM").hexdigest() + "\n")
    assert store.find("debian-6.1", "k") == saved
    (tmp_path / f".{saved.state.name}.123").write_bytes(b"partial")  # a killed save's
    (tmp_path / f".{saved.console.name}.123").write_text("partial")
    store.discard(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["flipped", "truncated", "garbage", "missing"])
def test_a_damaged_state_is_recognised(tmp_path, damage):
    saved = snapshot.SnapshotStore(tmp_path).paths("debian-6.1", "k")
    data = bytes(range(256)) * 64
    saved.state.write_bytes(data)
    saved.digest.write_text(hashlib.sha256(data).hexdigest() + "\n")
    assert saved.damage() is None
    time.sleep(0.01)  # a new mtime, as any rewrite has
    if damage == "missing":
        saved.state.unlink()
    else:
        saved.state.write_bytes({"flipped": data[:100] + b"\xff" + data[101:], "truncated": data[:1000],
                                 "garbage": b"garbage"}[damage])
    assert saved.damage() is not None


def test_restored_console_starts_with_the_saving_boot(tmp_path):
    saved = snapshot.SavedGuest(tmp_path / "g.state", tmp_path / "g.console", tmp_path / "g.sha256")
    saved.console.write_text("Linux version 6.1\nWARNING: CPU: 0 PID: 1 at boot\n")
    text = saved.console_for_restore()
    assert text.startswith("Linux version 6.1\nWARNING: CPU: 0 PID: 1 at boot\n")
    assert text.endswith("restored guest ====\n") and "g.state" in text


def test_waiting_for_another_save_is_bounded_per_key_and_shows_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "WAIT_PROGRESS_S", 0.1)
    store = snapshot.SnapshotStore(tmp_path)
    busy, free = store.paths("debian-6.1", "k"), store.paths("debian-6.1", "other")
    lock = lambda saved: open(tmp_path / f".{saved.state.stem}.lock", "w")  # noqa: E731
    notes = []
    with lock(busy) as other_run, lock(busy) as mine:
        fcntl.flock(other_run, fcntl.LOCK_EX)  # another run is saving this configuration
        with pytest.raises(HarnessError) as exc:
            store._lock(mine, busy, Deadline(0.5, "save"), notes.append)
        assert exc.value.phase == "save" and "gave up waiting" in exc.value.message
        assert notes and all("waiting for another run saving debian-6.1-k.state" in n for n in notes)
        with lock(free) as other_config:  # ... while another configuration's lock is free
            store._lock(other_config, free, Deadline(0.5, "save"), notes.append)


# --- pruning: the folder only grows on a save, so a save prunes ---------------------------

DAY = 86400.0
NOW = 1_000_000_000.0


def test_prune_plan_removes_states_unused_for_the_max_age_and_keeps_the_rest():
    entries = [("old", 10, NOW - 15 * DAY), ("fresh", 10, NOW - 2 * DAY), ("kept", 10, NOW - 30 * DAY)]
    assert snapshot.prune_plan(entries, NOW, 10**9, 14 * DAY, keep={"kept"}) == ["old"]


def test_prune_plan_removes_least_recently_used_until_under_the_size_limit():
    entries = [("b", 40, NOW - 3 * DAY), ("a", 40, NOW - 5 * DAY), ("c", 40, NOW - 1 * DAY), ("new", 40, NOW)]
    assert snapshot.prune_plan(entries, NOW, 100, 14 * DAY, keep={"new"}) == ["a", "b"]


def test_prune_plan_never_removes_a_state_used_within_the_last_hour_even_over_the_limit():
    entries = [("busy", 40, NOW - 60), ("new", 40, NOW)]
    assert snapshot.prune_plan(entries, NOW, 10, 14 * DAY, keep={"new"}) == []


def _saved_set(store, stem, size, used):
    image, key = stem.rsplit("-", 1)
    saved = store.paths(image, key)
    saved.state.write_bytes(b"s" * size)
    saved.console.write_text("console")
    saved.digest.write_text("digest\n")
    lock = store.folder / f".{stem}.lock"
    lock.touch()
    import os
    os.utime(lock, (used, used))
    return saved


def test_prune_removes_the_files_of_old_states_but_not_one_another_run_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("MCE_SNAPSHOT_CACHE_MIB", "4096")
    store = snapshot.SnapshotStore(tmp_path)
    old = _saved_set(store, "debian-6.1-00000000000000aa", 100, NOW - 20 * DAY)
    held = _saved_set(store, "debian-6.12-00000000000000bb", 100, NOW - 20 * DAY)
    new = _saved_set(store, "debian-6.1-00000000000000cc", 100, NOW)
    with (tmp_path / ".debian-6.12-00000000000000bb.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pruned = store.prune(keep={new.state.stem}, now=NOW)
    assert pruned == [("debian-6.1-00000000000000aa", 100)]
    assert not old.state.exists() and not old.console.exists() and not old.digest.exists()
    assert held.state.exists() and new.state.exists()


def test_find_marks_a_state_used(tmp_path):
    store = snapshot.SnapshotStore(tmp_path)
    saved = _saved_set(store, "debian-6.1-00000000000000aa", 10, NOW - 20 * DAY)
    assert store.find("debian-6.1", "00000000000000aa") == saved
    assert time.time() - (tmp_path / ".debian-6.1-00000000000000aa.lock").stat().st_mtime < 60


def test_a_malformed_cache_limit_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MCE_SNAPSHOT_CACHE_MIB", "4G")
    with pytest.raises(HarnessError, match="MCE_SNAPSHOT_CACHE_MIB='4G': expected a whole number of MiB"):
        snapshot.SnapshotStore(tmp_path).prune(keep=set())


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing"])
def test_a_damaged_or_missing_disk_saved_with_the_state_is_recognised(tmp_path, damage):
    saved = snapshot.SnapshotStore(tmp_path).paths("debian-12-full", "k")
    state, disk = b"QEVM" * 100, bytes(range(256)) * 64
    saved.state.write_bytes(state)
    saved.scratch.write_bytes(disk)
    saved.digest.write_text(f"{hashlib.sha256(state).hexdigest()}\n{hashlib.sha256(disk).hexdigest()} "
                            f"{saved.scratch.name}\n")
    assert saved.damage(wanted_disks=(False, True)) is None
    time.sleep(0.01)
    if damage == "missing":
        saved.scratch.unlink()
    else:
        saved.scratch.write_bytes({"flipped": disk[:100] + b"\xff" + disk[101:], "truncated": disk[:1000]}[damage])
    why = saved.damage(wanted_disks=(False, True))
    assert why is not None and saved.scratch.name in why
    # A guest that boots from a disk needs its overlay too: never restored without it.
    assert "root.qcow2" in snapshot.SnapshotStore(tmp_path).paths("x", "k").damage(wanted_disks=(True, False))


def test_discard_removes_the_disks_saved_with_a_state(tmp_path):
    store = snapshot.SnapshotStore(tmp_path)
    saved = store.paths("debian-12-full", "k")
    for path in (saved.state, saved.console, saved.digest, saved.root, saved.scratch):
        path.write_bytes(b"x")
    (tmp_path / f".{saved.root.name}.123").write_bytes(b"partial")  # a killed save's copy
    store.discard(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_disk_folders_are_per_run_but_the_scratch_size_and_the_disks_are_in_the_key(tmp_path):
    one = config(root_disk=Path("/tmp/mce-overlay-a/root.qcow2"), disk=Path("/tmp/mce-disk-a/disk.img"))
    two = config(root_disk=Path("/tmp/mce-overlay-b/root.qcow2"), disk=Path("/tmp/mce-disk-b/disk.img"))
    assert key(one) == key(two)
    assert key(one) != key(config(root_disk=Path("/tmp/mce-overlay-a/root.qcow2")))  # no scratch disk
    assert key(one) != key()
    image = GuestImage(name="debian-6.1", directory=tmp_path / "0123abcd", kernel=tmp_path / "0123abcd" / "vmlinux",
                       initrd=tmp_path / "0123abcd" / "initrd", kernel_release="6.1.0-56-amd64",
                       kernel_package="linux-image-6.1.0-56-amd64", kernel_package_version="6.1.192-2",
                       client_key=tmp_path / "key", host_key_line="ssh-ed25519 AAAA")
    small = QemuGuest(image=image, spec=GuestSpec(disk_mib=64), artifacts=tmp_path / "a", accel="tcg",
                      disk=tmp_path / "x" / "disk.img")
    large = QemuGuest(image=image, spec=GuestSpec(disk_mib=256), artifacts=tmp_path / "a", accel="tcg",
                      disk=tmp_path / "y" / "disk.img")
    assert small.state_identity() != large.state_identity()
    assert small.state_identity() == QemuGuest(image=image, spec=GuestSpec(disk_mib=64), artifacts=tmp_path / "b",
                                               accel="tcg", disk=tmp_path / "z" / "disk.img").state_identity()


# Saved guests by default (issue 28 item 2): which runs restore, which boot, and why.
@pytest.mark.parametrize("argv, wanted", [
    (["run", "x"], (True, None)),
    (["run", "x", "--snapshot"], (True, None)),
    (["run", "x", "--cold"], (False, "--cold")),
    (["run", "x", "--kernel", "/k"], (False, "--kernel: a build of your own, new each time")),
    (["run", "x", "--kernel", "/k", "--snapshot"], (True, None)),
    (["run", "x", "--bisect"], (False, "--bisect: a new kernel at each step")),
    (["run", "x", "--keep", "always"], (False, "--keep")),
    (["run", "x", "--keep-alive-on-failure"], (False, "--keep-alive-on-failure")),
    (["run", "x", "--disk-image", "/d.qcow2"], (False, "--disk-image")),
])
def test_saved_guests_are_the_default_except_where_a_save_would_not_serve(argv, wanted):
    from orchestrator.cli import _parser, saved_guests_wanted
    args = _parser().parse_args(argv)
    args.attach = None  # what _check_backend sets without --domain
    assert saved_guests_wanted(args) == wanted


def test_an_attached_domain_boots_nothing_to_save():
    from orchestrator.cli import _parser, saved_guests_wanted
    args = _parser().parse_args(["run", "x"])
    args.attach = ("dom", object())
    assert saved_guests_wanted(args) == (False, "--domain: a domain of your own")


def test_snapshot_and_cold_together_are_a_usage_error(capsys):
    from orchestrator.cli import _parser
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["run", "x", "--snapshot", "--cold"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# A saving boot that locks up is tried once more (seen: a 4-vCPU 6.12 boot under TCG with
# stress-ng beside it stuck 209 s in stop_machine; the next boot saved in 9 s).
class _Image:
    name = "debian-6.12"


class _Guest:
    image = _Image()


def _save_that_fails(messages: list[str]):
    calls = []

    def boot_and_save(guest, saved, deadline):
        calls.append(saved)
        if len(calls) <= len(messages):
            saved.state.write_bytes(b"half")  # what a failed save may leave
            raise HarnessError("save", messages[len(calls) - 1])
        for path in (saved.state, saved.console, saved.digest):
            path.write_text("saved")
    return boot_and_save, calls


LOCKED = ("saving a booted guest failed: stopped waiting for SSH: the booting kernel locked up: "
          "watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [migration/3:38]")


@pytest.mark.parametrize("failures, tries, error", [
    ([LOCKED], 2, None),
    ([LOCKED, LOCKED], 2, "the booting kernel locked up"),
    (["saving a booted guest failed: the kernel panicked during boot: Kernel panic - not syncing: VFS"], 1,
     "the kernel panicked during boot"),
])
def test_a_saving_boot_that_locks_up_is_tried_once_more(tmp_path, monkeypatch, failures, tries, error):
    boot_and_save, calls = _save_that_fails(failures)
    monkeypatch.setattr(snapshot, "_boot_and_save", boot_and_save)
    monkeypatch.setattr(snapshot, "_complete", lambda saved: False)
    store, notes = snapshot.SnapshotStore(tmp_path), []
    if error:
        with pytest.raises(HarnessError, match=error):
            store.ensure(_Guest(), "k", Deadline(10, "save"), notes.append)
        assert not store.paths("debian-6.12", "k").state.exists()  # nothing half-saved is left
    else:
        assert store.ensure(_Guest(), "k", Deadline(10, "save"), notes.append).state.read_text() == "saved"
    assert len(calls) == tries
    assert [n for n in notes if "locked up" in n] == (
        ["the boot to save locked up (watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [migration/3:38]); "
         "booting it again"] if failures[0] == LOCKED else [])


@pytest.mark.parametrize("line, lockup", [
    ("[  224.702006] watchdog: BUG: soft lockup - CPU#3 stuck for 209s! [migration/3:38]", True),
    ("[   30.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", True),
    ("[   30.1] rcu: INFO: rcu_sched self-detected stall on CPU", True),
    ("[    0.2] watchdog: Disabling watchdog on nohz_full cores by default", False),
])
def test_lockup_reports_are_the_kernels_own_lines(line, lockup):
    from orchestrator.guest.readiness import LOCKUP_LINE
    assert bool(LOCKUP_LINE.search(line)) == lockup


def test_only_the_saving_boot_gives_up_on_a_lockup_report(tmp_path):
    from orchestrator.guest.readiness import BOOT_LOCKED_UP, BootPanic

    class Booting:
        console_log = tmp_path / "console.log"

    Booting.console_log.write_text("[  224.7] watchdog: BUG: soft lockup - CPU#3 stuck for 209s! [migration/3:38]\n")
    assert BootPanic(Booting(), lockups=True)() == (f"{BOOT_LOCKED_UP}: watchdog: BUG: soft lockup - CPU#3 stuck "
                                                    f"for 209s! [migration/3:38]")
    assert BootPanic(Booting())() is None  # a scenario's own boot: the kernel may yet come up
