"""Kernel sources: a kernel's version and .config read from the kernel itself, and a
local kernel's identity (what its image and saved guests are keyed on)."""

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from orchestrator.guest.images import ImageError, bzimage, elf, image_inputs_digest

from orchestrator.guest.images.kernels import LocalKernel


from .test_image import fake_vmlinux

VERSION = b"6.13.0-rc1-mce+ (dev@box) #7 SMP PREEMPT_DYNAMIC Thu Nov 26 12:00:00 UTC 2026"


def fake_bzimage(payload: bytes = b"", version: bytes | None = VERSION) -> bytes:
    setup = bytearray(4 * 512)  # setup_sects = 3
    setup[0x1F1] = 3
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    if version is not None:
        struct.pack_into("<H", setup, 0x20E, 0x400)  # the string at 0x400 + 0x200
        setup[0x600 : 0x600 + len(version) + 1] = version + b"\0"
    struct.pack_into("<II", setup, 0x248, 16, len(payload))
    return bytes(setup) + bytes(16) + payload + bytes(32)


def xz_payload(raw: bytes) -> bytes:
    return lzma.compress(raw, check=lzma.CHECK_CRC32) + struct.pack("<I", len(raw))


def test_release_from_the_bzimage_header():
    assert bzimage.release(fake_bzimage()) == "6.13.0-rc1-mce+"
    assert bzimage.kernel_release(fake_bzimage()) == "6.13.0-rc1-mce+"
    assert bzimage.release(fake_bzimage(version=None)) is None
    assert bzimage.release(bytes(4096)) is None


def test_release_from_a_vmlinux_banner():
    vmlinux = fake_vmlinux() + b"\0Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc)\0"
    assert elf.linux_release(vmlinux) == "6.1.0-56-amd64"
    assert bzimage.kernel_release(vmlinux) == "6.1.0-56-amd64"
    assert elf.linux_release(fake_vmlinux()) is None


def test_embedded_config_as_extract_ikconfig_finds_it():
    config = "CONFIG_X86_MCE=y\n# CONFIG_KSM is not set\n"
    blob = fake_vmlinux() + b"IKCFG_ST" + gzip.compress(config.encode()) + b"IKCFG_ED" + bytes(64)
    assert bzimage.embedded_config(blob) == config
    # Inside a bzImage's compressed payload too.
    assert bzimage.embedded_config(fake_bzimage(xz_payload(blob))) == config
    assert bzimage.embedded_config(fake_vmlinux()) is None


def build_tree(root: Path, version: bytes = VERSION, config: str = "CONFIG_X86_MCE=y\n") -> Path:
    (root / "arch/x86/boot").mkdir(parents=True)
    (root / "arch/x86/boot/bzImage").write_bytes(fake_bzimage(version=version))
    (root / ".config").write_text(config)
    (root / "drivers/net").mkdir(parents=True)
    (root / "drivers/net/virtio_net.ko").write_bytes(b"\x7fELF-not-really")
    return root


def test_a_build_tree_is_read_for_kernel_config_and_modules(tmp_path):
    tree = build_tree(tmp_path / "linux")
    kernel = LocalKernel(tree)
    assert kernel.release == "6.13.0-rc1-mce+"
    assert kernel.moddir == tree.resolve()  # modules beside their sources
    files = kernel.unpack(tmp_path / "work", {})
    assert files.image == tree.resolve() / "arch/x86/boot/bzImage" and files.config == "CONFIG_X86_MCE=y\n"
    assert kernel.debs() == {}


def test_identity_follows_the_kernel_its_config_and_modules(tmp_path):
    tree = build_tree(tmp_path / "linux")
    first = LocalKernel(tree).identity()
    assert LocalKernel(tree).identity() == first
    (tree / ".config").write_text("CONFIG_X86_MCE=y\nCONFIG_KSM=y\n")
    second = LocalKernel(tree).identity()
    assert second != first
    (tree / "drivers/net/virtio_net.ko").write_bytes(b"\x7fELF-rebuilt, longer")
    third = LocalKernel(tree).identity()
    assert third != second
    (tree / "arch/x86/boot/bzImage").write_bytes(fake_bzimage(version=VERSION.replace(b"#7", b"#8")))
    assert LocalKernel(tree).identity()["kernel_sha256"] != third["kernel_sha256"]
    init = tmp_path / "init"
    init.write_text("#!/bin/sh\n")
    digests = {image_inputs_digest("local", {}, {}, init_script=init, kernel=k) for k in (first, second, third)}
    assert len(digests) == 3


def test_modules_from_an_install_mod_path(tmp_path):
    kernel_file = tmp_path / "bzImage"
    kernel_file.write_bytes(fake_bzimage())
    assert LocalKernel(kernel_file).moddir is None  # a lone file brings no modules
    install = tmp_path / "install"
    (install / "lib/modules/6.13.0-rc1-mce+/kernel").mkdir(parents=True)
    assert LocalKernel(kernel_file, install).moddir == install / "lib/modules/6.13.0-rc1-mce+"
    assert LocalKernel(kernel_file, install / "lib/modules/6.13.0-rc1-mce+").moddir.name == "6.13.0-rc1-mce+"
    (tmp_path / "other/lib/modules/6.1.0-56-amd64").mkdir(parents=True)
    with pytest.raises(ImageError, match=r"no lib/modules/6.13.0-rc1-mce\+ in it"):
        LocalKernel(kernel_file, tmp_path / "other")


@pytest.mark.parametrize("content, message", [
    (b"just text", "neither a bzImage nor an ELF vmlinux"),
    (None, "no such file or folder"),
])
def test_unusable_kernels_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "kernel"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as err:
        LocalKernel(path)
    assert "\n" not in str(err.value)


def test_a_tree_without_a_built_bzimage(tmp_path):
    (tmp_path / "linux").mkdir()
    with pytest.raises(ImageError, match="needs arch/x86/boot/bzImage"):
        LocalKernel(tmp_path / "linux")


# Issue 22 item 5: a kernel laid out as a distribution installs it had its config beside it, unread.

def distribution_layout(root: Path, release: str = "6.13.0-rc1-mce+") -> tuple[Path, Path]:
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(fake_bzimage(xz_payload(fake_vmlinux())))
    (root / "lib/modules" / release).mkdir(parents=True)
    return root / "boot" / f"vmlinuz-{release}", root


def test_config_beside_the_image_as_a_distribution_installs_it(tmp_path):
    kernel_file, install = distribution_layout(tmp_path)
    assert LocalKernel(kernel_file, install).config_file() is None  # nothing anywhere: said so by the runner
    (tmp_path / "boot" / "config-6.13.0-rc1-mce+").write_text("CONFIG_X86_MCE=y\n")
    files = LocalKernel(kernel_file, install).unpack(tmp_path / "work", {})
    assert files.config == "CONFIG_X86_MCE=y\n"
    assert files.config_source == str(tmp_path.resolve() / "boot" / "config-6.13.0-rc1-mce+")


def test_config_in_the_modules_folder_or_behind_its_build_link(tmp_path):
    kernel_file, install = distribution_layout(tmp_path)
    moddir = install / "lib/modules/6.13.0-rc1-mce+"
    tree = build_tree(tmp_path / "linux", config="CONFIG_KSM=y\n")
    (moddir / "build").symlink_to(tree)
    assert LocalKernel(kernel_file, install).config_file() == ("CONFIG_KSM=y\n", str(moddir.resolve() / "build/.config"))
    (moddir / "config").write_text("CONFIG_THP=y\n")   # Debian's 7.x packages keep it there
    assert LocalKernel(kernel_file, install).config_file()[1] == str(moddir.resolve() / "config")


def test_vmlinuz_inside_the_modules_folder_finds_its_config(tmp_path):
    moddir = tmp_path / "usr/lib/modules/6.13.0-rc1-mce+"
    moddir.mkdir(parents=True)
    (moddir / "vmlinuz").write_bytes(fake_bzimage())
    (moddir / "config").write_text("CONFIG_X86_MCE=y\n")
    assert LocalKernel(moddir / "vmlinuz").config_file() == ("CONFIG_X86_MCE=y\n", str(moddir.resolve() / "config"))
