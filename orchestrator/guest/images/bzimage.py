"""The x86 bzImage: its version string, the ELF vmlinux inside it, the embedded .config."""
from __future__ import annotations

import lzma
import struct
import zlib

from orchestrator.guest.images import elf
from orchestrator.guest.images.errors import ImageError, run


def is_bzimage(data: bytes) -> bool:
    return data[0x202:0x206] == b"HdrS"


def release(bzimage: bytes) -> str | None:
    """`uname -r` of a bzImage, from the header's kernel_version string
    ("6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP ...")."""
    if not is_bzimage(bzimage):
        return None
    (offset,) = struct.unpack_from("<H", bzimage, 0x20E)
    if not offset:
        return None
    start = offset + 0x200
    end = bzimage.find(b"\0", start, start + 512)
    words = bzimage[start:end].split()
    return words[0].decode(errors="replace") if end > start and words else None


def decompress_payload(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage (xz, zstd or gzip payload), whole (relocations included)."""
    if not is_bzimage(bzimage) or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise ImageError("extracting vmlinux: not a bzImage with boot protocol >= 2.08")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    # xz and zstd payloads are followed by the uncompressed size (4 bytes).
    (size,) = struct.unpack_from("<I", payload, len(payload) - 4)
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            data = lzma.LZMADecompressor().decompress(payload)
        elif payload.startswith(b"\x28\xb5\x2f\xfd"):
            data = run(["zstd", "-dc"], step="extracting vmlinux (zstd)", input=payload[:-4], text=False)
        elif payload.startswith(b"\x1f\x8b"):
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
            size = len(data)
        else:
            raise ImageError(f"extracting vmlinux: unsupported compression (magic {payload[:4].hex()})")
    except (lzma.LZMAError, zlib.error) as e:
        raise ImageError(f"extracting vmlinux: {e}") from None
    if len(data) != size or not data.startswith(b"\x7fELF"):
        raise ImageError("extracting vmlinux: decompressed payload is not the expected ELF file")
    return data


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage, trimmed to the ELF file, for PVH boot."""
    data = decompress_payload(bzimage)
    data = data[: elf.extent(data)]
    if not elf.has_pvh_entry(data):
        raise ImageError("extracting vmlinux: no PVH entry note (kernel built without CONFIG_PVH)")
    return data


def rodata_strings(kernel: bytes, what: str = "kernel") -> list[str]:
    """The strings of a kernel's .rodata: a vmlinux's, or those of the one inside a bzImage."""
    if is_bzimage(kernel):
        data = decompress_payload(kernel)
        kernel = data[: elf.extent(data)]
    return elf.rodata_strings(kernel, what)


IKCONFIG_START = b"IKCFG_ST\x1f\x8b\x08"  # what scripts/extract-ikconfig looks for


def embedded_config(kernel: bytes) -> str | None:
    """The .config a kernel built with CONFIG_IKCONFIG carries (a vmlinux, or a bzImage's
    payload), or None."""
    if is_bzimage(kernel):
        try:
            kernel = decompress_payload(kernel)
        except ImageError:
            return None
    at = kernel.find(IKCONFIG_START)
    if at < 0:
        return None
    try:
        # The gzip stream ends before "IKCFG_ED"; decompressobj stops at its end.
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(kernel[at + 8 :]).decode(errors="replace")
    except zlib.error:
        return None


def kernel_release(kernel: bytes) -> str | None:
    """`uname -r` of a bzImage or a vmlinux."""
    if is_bzimage(kernel):
        return release(kernel)
    return elf.linux_release(kernel)


