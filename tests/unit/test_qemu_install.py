"""--qemu: which binary, its own firmware, the pinned second QEMU (no network: a scripted apt)."""
import hashlib
import subprocess
from pathlib import Path

import pytest

from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.guest.qemu.install import (QemuError, ensure_qemu, firmware_layout, host_mirror, install_folder,
                                             resolve_qemu)
from orchestrator.report import ScenarioResult, write_json, write_junit
from orchestrator.report.repro import repro_script, run_argv
from orchestrator.plumbing.outcome import Outcome


def _unpacked(root: Path) -> Path:
    binary = root / "usr/bin/qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)'\n")
    binary.chmod(0o755)
    (root / "usr/share/qemu").mkdir(parents=True)
    (root / "usr/share/qemu/qboot.rom").write_bytes(b"\0" * 16)
    return binary


def test_an_unpacked_package_uses_its_own_roms_and_qboot(tmp_path):
    binary = _unpacked(tmp_path / "pkg")
    folders, qboot = firmware_layout(str(binary))
    assert folders == (tmp_path / "pkg/usr/share/qemu",)
    assert qboot == tmp_path / "pkg/usr/share/qemu/qboot.rom"


def test_a_build_tree_uses_its_pc_bios(tmp_path):
    (tmp_path / "qemu/pc-bios").mkdir(parents=True)
    (tmp_path / "qemu/pc-bios/qboot.rom").write_bytes(b"\0")
    (tmp_path / "qemu/build").mkdir()
    binary = tmp_path / "qemu/build/qemu-system-x86_64"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert firmware_layout(str(binary)) == ((tmp_path / "qemu/pc-bios",), tmp_path / "qemu/pc-bios/qboot.rom")
    # --qemu TREE finds build/qemu-system-x86_64
    assert resolve_qemu(str(tmp_path / "qemu"), tmp_path) == str(binary)


def test_the_system_qemu_has_no_data_dirs():
    assert firmware_layout("qemu-system-x86_64")[0] == ()


def test_data_dirs_come_first_on_the_command_line():
    c = qemu_args.QemuConfig(kernel=Path("/k"), initrd=Path("/i"), console_log=Path("/c"), qmp_fd=3, ssh_port=1,
                             qemu_binary="/q/usr/bin/qemu-system-x86_64", data_dirs=(Path("/q/usr/share/qemu"),),
                             firmware=Path("/q/usr/share/qemu/qboot.rom"))
    argv = qemu_args.build_argv(c)
    assert argv[:3] == ["/q/usr/bin/qemu-system-x86_64", "-L", "/q/usr/share/qemu"]
    assert argv[argv.index("-bios") + 1] == "/q/usr/share/qemu/qboot.rom"


def test_an_unknown_name_or_path_is_one_line(tmp_path):
    with pytest.raises(QemuError, match="no such file"):
        resolve_qemu("/nowhere/qemu-system-x86_64", tmp_path)
    with pytest.raises(QemuError, match="not a path and not a QEMU in guest-images/qemus.yaml"):
        resolve_qemu("qemu-99", tmp_path)


class ScriptedApt:
    """PrivateApt as ensure_qemu uses it: a suite holding `archive` {package: (version, deb bytes)}."""

    def __init__(self, archive, workdir: Path):
        self.archive, self.workdir, self.updates = archive, workdir, 0

    def update(self):
        self.updates += 1

    def sha256(self, package, version):
        held = self.archive.get(package)
        return hashlib.sha256(held[1]).hexdigest() if held and held[0] == version else None

    def candidate(self, package):
        return self.archive[package][0] if package in self.archive else None

    def download(self, specs, into):
        for spec in specs:
            package, version = spec.split("=")
            (into / f"{package}_{version.replace(':', '%3a')}_amd64.deb").write_bytes(self.archive[package][1])


def _deb(tmp_path: Path, name: str, files: dict[str, bytes]) -> bytes:
    root = tmp_path / f"src-{name}"
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        (root / path).chmod(0o755)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1:10.0.2\nArchitecture: all\n"
                                         f"Maintainer: t <t@t>\nDescription: t\n")
    subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(root), str(tmp_path / f"{name}.deb")], check=True,
                   capture_output=True)
    return (tmp_path / f"{name}.deb").read_bytes()


def test_the_pinned_packages_are_checked_and_unpacked_privately(tmp_path):
    x86 = _deb(tmp_path, "qemu-system-x86", {"usr/bin/qemu-system-x86_64": b"#!/bin/sh\necho QEMU emulator version 10.0.2\n"})
    data = _deb(tmp_path, "qemu-system-data", {"usr/share/qemu/qboot.rom": b"\0" * 8})
    pins = {"q10": {"suite": "bookworm-backports", "version": "1:10.0.2",
                    "packages": {"qemu-system-x86": hashlib.sha256(x86).hexdigest(),
                                 "qemu-system-data": hashlib.sha256(data).hexdigest()}}}
    apt = ScriptedApt({"qemu-system-x86": ("1:10.0.2", x86), "qemu-system-data": ("1:10.0.2", data)}, tmp_path)
    binary = ensure_qemu("q10", tmp_path / "cache", pins=pins, apt=apt)
    assert binary == install_folder((tmp_path / "cache").resolve(), "q10", "1:10.0.2") / "usr/bin/qemu-system-x86_64"
    assert (binary.parents[2] / "usr/share/qemu/qboot.rom").is_file()
    assert ensure_qemu("q10", tmp_path / "cache", pins=pins, apt=apt) == binary and apt.updates == 1  # cached


def test_a_checksum_mismatch_unpacks_nothing(tmp_path):
    x86 = _deb(tmp_path, "qemu-system-x86", {"usr/bin/qemu-system-x86_64": b"#!/bin/sh\n"})
    pins = {"q10": {"suite": "s", "version": "1:10.0.2", "packages": {"qemu-system-x86": "0" * 64}}}
    apt = ScriptedApt({"qemu-system-x86": ("1:10.0.2", x86)}, tmp_path)
    with pytest.raises(QemuError, match="SHA-256 .* the pin says 0000"):
        ensure_qemu("q10", tmp_path / "cache", pins=pins, apt=apt)
    assert not install_folder((tmp_path / "cache").resolve(), "q10", "1:10.0.2").exists()


def test_a_version_gone_from_the_archive_says_how_to_move_the_pin(tmp_path):
    pins = {"q10": {"suite": "bookworm-backports", "version": "1:10.0.2", "packages": {"qemu-system-x86": "0" * 64}}}
    apt = ScriptedApt({"qemu-system-x86": ("1:10.0.3", b"")}, tmp_path)
    with pytest.raises(QemuError) as exc:
        ensure_qemu("q10", tmp_path / "cache", pins=pins, apt=apt)
    message = str(exc.value)
    assert "\n" not in message
    assert "1:10.0.2 is no longer in bookworm-backports (it has 1:10.0.3)" in message
    assert "move the pin in guest-images/qemus.yaml" in message and "--show q10" in message


def test_the_host_mirror_is_read_from_its_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert host_mirror((deb822,)) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert host_mirror((tmp_path / "absent", one_line)) == "http://other.example/debian"


def test_the_qemu_version_is_in_report_json_junit_and_repro(tmp_path):
    r = ScenarioResult(name="s", path="s.yaml", outcome=Outcome.PASS, artifacts=tmp_path, kernel_release="6.1.0",
                       qemu_version="10.0.2 (Debian 1:10.0.2+ds-2)", qemu_binary="/q/usr/bin/qemu-system-x86_64")
    write_json([r], tmp_path / "report.json", {})
    assert '"version": "10.0.2 (Debian 1:10.0.2+ds-2)"' in (tmp_path / "report.json").read_text()
    write_junit([r], tmp_path / "junit.xml")
    assert '<property name="qemu_version" value="10.0.2 (Debian 1:10.0.2+ds-2)"' in (tmp_path / "junit.xml").read_text()
    args = run_argv(scenario_file="scenario/s.yaml", image=None, kernel=None, modules=None, append="", accel=None,
                    snapshot=False, qemu="debian-backports")
    assert args[-3:] == ["--qemu", "debian-backports", "--cold"]
    script = repro_script(scenario="s", run_args=args, commit=None, kernel_release="6.1.0",
                          qemu_version="10.0.2 (Debian 1:10.0.2+ds-2)")
    assert "QEMU 10.0.2 (Debian 1:10.0.2+ds-2)" in script and '"${MCE_QEMU:-debian-backports}"' in script


def test_a_qemu_commit_that_did_not_build_is_a_bisect_skip(tmp_path, capsys):
    from orchestrator.cli import main
    assert main(["run", "--bisect", "--qemu", str(tmp_path / "build"), "--results", str(tmp_path),
                 "srao-anon-late-kill"]) == 125
    assert main(["run", "--qemu", "no-such-qemu", "--results", str(tmp_path), "srao-anon-late-kill"]) == 2
    assert "not a path and not a QEMU" in capsys.readouterr().err
