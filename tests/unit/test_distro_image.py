"""The full-distribution image builder's pure parts (the build itself runs in tests/integration)."""
from pathlib import Path

import pytest

from orchestrator.guest.images import distro as distro_image
from orchestrator.guest.images import ImageError

REPO = Path(__file__).resolve().parents[2]
DEFINITION = {"suite": "bookworm", "kernel": "linux-image-6.1.0-*-amd64", "packages": ["systemd-sysv"]}


def test_the_catalog_definitions_load():
    defs = distro_image.load_distro_definitions(REPO / "guest-images" / distro_image.DEFINITIONS_FILE)
    full = defs["debian-12-full"]
    assert full["kernel"] == "linux-image-6.1.0-*-amd64"  # the debian-6.1 image's kernel, not -cloud
    for package in ("systemd-sysv", "openssh-server", "rasdaemon", "cloud-init", "initramfs-tools"):
        assert package in full["packages"]


@pytest.mark.parametrize("entry, message", [
    ({**DEFINITION, "colour": "red"}, "unknown key"),
    ({**DEFINITION, "kernel": "linux-6.1"}, "'kernel' must be"),
    ({**DEFINITION, "suite": "bookworm; reboot"}, "'suite' must be"),
    ({**DEFINITION, "packages": "systemd"}, "'packages' must be"),
    ({**DEFINITION, "disk_mib": 100}, "'disk_mib'"),
])
def test_bad_definitions_are_one_line_errors(tmp_path, entry, message):
    import yaml
    f = tmp_path / "d.yaml"
    f.write_text(yaml.safe_dump({"x": entry}))
    with pytest.raises(ImageError, match=message):
        distro_image.load_distro_definitions(f)


def test_no_definitions_file_is_no_images(tmp_path):
    assert distro_image.load_distro_definitions(tmp_path / "absent.yaml") == {}


def test_digest_follows_every_input(tmp_path):
    src = tmp_path / "builder.py"
    src.write_text("v1")
    base = dict(name="n", definition=DEFINITION, versions={"k": "1"}, sources="deb x", builder_source=src)
    d0 = distro_image.distro_inputs_digest(**base)
    assert d0 == distro_image.distro_inputs_digest(**base)
    assert d0 != distro_image.distro_inputs_digest(**{**base, "versions": {"k": "2"}})
    assert d0 != distro_image.distro_inputs_digest(**{**base, "sources": "deb y"})
    assert d0 != distro_image.distro_inputs_digest(**{**base, "definition": {**DEFINITION, "disk_mib": 4096}})
    src.write_text("v2")
    assert d0 != distro_image.distro_inputs_digest(**base)


def test_mmdebstrap_reads_the_host_sources_on_stdin():
    argv = distro_image.mmdebstrap_argv("bookworm", ["linux-image-6.1.0-56-amd64", "rasdaemon"], Path("/b/root"),
                                        Path("/b/setup"))
    assert argv[0] == "mmdebstrap" and argv[-3:] == ["bookworm", "/b/root", "-"]
    assert "--include=linux-image-6.1.0-56-amd64,rasdaemon" in argv
    assert '--setup-hook=cp -a /b/setup/. "$1"/' in argv


def test_guest_files_keep_keys_private_and_pin_one_host_key():
    files = distro_image.guest_files("ssh-ed25519 CLIENT", b"PRIVATE", "ssh-ed25519 HOST")
    assert files["etc/ssh/ssh_host_ed25519_key"] == (b"PRIVATE", 0o600)
    assert files["root/.ssh/authorized_keys"] == (b"ssh-ed25519 CLIENT mceorch-client\n", 0o600)
    sshd = files["etc/ssh/sshd_config.d/mceorch.conf"][0].decode()
    assert "HostKey /etc/ssh/ssh_host_ed25519_key" in sshd and "PasswordAuthentication no" in sshd
    assert b"DHCP=ipv4" in files["etc/systemd/network/10-mceorch-dhcp.network"][0]


def test_masked_units_never_include_what_the_scenarios_need():
    links = distro_image.unit_links()
    masked = {Path(p).name for p, target in links.items() if target == "/dev/null"}
    assert "apt-daily.timer" in masked and "man-db.timer" in masked
    for needed in ("ssh.service", "systemd-journald.service", "systemd-udevd.service", "rasdaemon.service",
                   "systemd-networkd.service"):
        assert needed not in masked
    assert links["etc/systemd/system/multi-user.target.wants/systemd-networkd.service"].endswith(
        "systemd-networkd.service")


def test_overlay_never_names_the_base_as_output():
    from orchestrator.guest.images.overlay import overlay_argv
    argv = overlay_argv(Path("/cache/disk.qcow2"), "qcow2", Path("/tmp/o/root.qcow2"))
    assert argv == ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "/cache/disk.qcow2",
                    "/tmp/o/root.qcow2"]


def test_rasdaemon_reads_single_events():
    """Debian 12's rasdaemon would wait for half a ring buffer of events (buffer_percent 50)."""
    files = distro_image.guest_files("ssh-ed25519 C", b"K", "ssh-ed25519 H")
    dropin = files["etc/systemd/system/rasdaemon.service.d/mceorch-buffer-percent.conf"][0].decode()
    assert "echo 0 > $d/buffer_percent" in dropin and "instances/rasdaemon" in dropin


def test_the_setup_hook_copies_from_a_build_folder_with_any_name(tmp_path):
    # A checkout path with a space, and one holding $(...): a path, never a command.
    import subprocess
    marker = tmp_path / "RAN"
    setup = tmp_path / f"check out $(touch {marker}) x" / "setup"
    (setup / "etc").mkdir(parents=True)
    (setup / "etc" / "f").write_text("copied\n")
    root = tmp_path / "root"
    root.mkdir()
    argv = distro_image.mmdebstrap_argv("bookworm", ["p"], root, setup)
    hook = next(a for a in argv if a.startswith("--setup-hook=")).split("=", 1)[1]
    # As mmdebstrap runs a hook that is not a file: sh -c HOOK exec ROOT.
    proc = subprocess.run(["sh", "-c", hook, "exec", str(root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc" / "f").read_text() == "copied\n" and not marker.exists()
