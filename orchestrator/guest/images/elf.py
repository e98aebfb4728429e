"""What the image builder reads from ELF files, through pyelftools: a program's
interpreter and libraries, a module's .modinfo, a vmlinux's PVH note, extent and
version banner."""
from __future__ import annotations

import io
import re

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from orchestrator.guest.images.errors import ImageError

XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU starts a vmlinux at
_BANNER = re.compile(rb"Linux version (\S+) \(")


def _open(data: bytes, what: str) -> ELFFile:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError(f"{what}: not a little-endian 64-bit ELF file")
    try:
        return ELFFile(io.BytesIO(data))
    except ELFError as e:
        raise ImageError(f"{what}: {e}") from None


def interp_and_needed(data: bytes, what: str = "ELF file") -> tuple[str | None, list[str]]:
    """PT_INTERP and the DT_NEEDED sonames of an ELF64 executable or library."""
    elf = _open(data, what)
    interp, needed = None, []
    try:
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_INTERP":
                interp = segment.get_interp_name()
            elif segment["p_type"] == "PT_DYNAMIC":
                needed = [tag.needed for tag in segment.iter_tags("DT_NEEDED")]
    except (ELFError, KeyError, ValueError) as e:
        raise ImageError(f"{what}: unreadable dynamic section ({e})") from None
    return interp, needed


def section(data: bytes, name: str, what: str = "ELF file") -> bytes | None:
    """Contents of the named section (e.g. a module's .modinfo), or None."""
    found = _open(data, what).get_section_by_name(name)
    return None if found is None else found.data()


def rodata_strings(data: bytes, what: str = "vmlinux") -> list[str]:
    """The NUL-terminated strings of a vmlinux's .rodata, where its printk formats are
    (each with its level prefix, "\\x01" and a digit)."""
    found = _open(data, what).get_section_by_name(".rodata")
    if found is None:
        raise ImageError(f"{what}: no .rodata section")
    return cstrings(found.data(), min_len=4)


def cstrings(data: bytes, min_len: int = 8) -> list[str]:
    """The NUL-terminated printable strings of a section, like strings(1)."""
    return [s.decode("latin-1") for s in re.findall(rb"[\x01-\x7e]{%d,}" % min_len, data)]


def _notes(elf: ELFFile):
    for segment in elf.iter_segments():
        if segment["p_type"] == "PT_NOTE":
            yield from segment.iter_notes()


def has_pvh_entry(data: bytes) -> bool:
    """Whether a vmlinux carries the XEN_ELFNOTE_PHYS32_ENTRY note QEMU needs to boot it (PVH)."""
    # pyelftools names only GNU note types; a Xen note keeps its number.
    return any(note["n_name"] == "Xen" and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY
               for note in _notes(_open(data, "vmlinux")))


def extent(data: bytes) -> int:
    """Where the ELF file ends: the bzImage payload appends relocation data after it."""
    elf = _open(data, "vmlinux")
    h = elf.header
    end = max(h["e_phoff"] + h["e_phnum"] * h["e_phentsize"], h["e_shoff"] + h["e_shnum"] * h["e_shentsize"])
    for segment in elf.iter_segments():
        end = max(end, segment["p_offset"] + segment["p_filesz"])
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_NOBITS":  # occupies no file space
            end = max(end, sec["sh_offset"] + sec["sh_size"])
    return end


def linux_release(data: bytes) -> str | None:
    """`uname -r` of a vmlinux, from its linux_banner ("Linux version 6.1.0-56-amd64 (...")."""
    elf = _open(data, "vmlinux")
    rodata = elf.get_section_by_name(".rodata")
    for blob in ([rodata.data()] if rodata is not None else []) + [data]:
        match = _BANNER.search(blob)
        if match:
            return match.group(1).decode(errors="replace")
    return None
