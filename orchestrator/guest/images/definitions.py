"""guest-images/images.yaml: the named images, each a Debian kernel package glob plus options."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from orchestrator.guest.images.errors import ImageError

DEFAULT_IMAGE = "debian-6.1"
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEFINITION_KEYS = {"kernel", "modules", "compression", "boot", "description"}
_COMPRESSIONS = ("gzip", "zstd", "none")
# Under TCG the initramfs compression made no measurable difference to boot time
# (the kernel unpacks it while other init work runs); gzip needs no host tool.
DEFAULT_COMPRESSION = "gzip"
# "pvh": hand QEMU the uncompressed ELF vmlinux, which it starts at the kernel's PVH
# entry point. That skips the bzImage's self-decompression (xz for 6.1), about 2 s of
# a 4.3 s boot under TCG. "bzimage": the package's vmlinuz as is.
_BOOT_MODES = ("pvh", "bzimage")
DEFAULT_BOOT = "pvh"


def load_image_definitions(path: Path) -> dict[str, dict]:
    """Read and check guest-images/images.yaml: {name: {"kernel": glob, ...}}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ImageError(f"image definitions {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise ImageError(f"image definitions {path}: invalid YAML: {first}") from None
    if not isinstance(data, dict) or not data:
        raise ImageError(f"image definitions {path}: expected a mapping of image names")
    out: dict[str, dict] = {}
    for name, entry in data.items():
        where = f"image definitions {path}: {name!r}"
        if not isinstance(name, str) or not _IMAGE_NAME.match(name):
            raise ImageError(f"{where}: names may use letters, digits, '.', '_', '-'")
        if not isinstance(entry, dict):
            raise ImageError(f"{where}: expected a mapping with a 'kernel' key")
        unknown = sorted(set(entry) - _DEFINITION_KEYS)
        if unknown:
            raise ImageError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
        if not isinstance(entry.get("kernel"), str) or not entry["kernel"].startswith("linux-image-"):
            raise ImageError(f"{where}: 'kernel' must be a package glob like 'linux-image-6.1.0-*-amd64'")
        modules = entry.get("modules")
        if modules is not None and (
            not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules)
        ):
            raise ImageError(f"{where}: 'modules' must be a list of module names")
        if entry.get("compression", DEFAULT_COMPRESSION) not in _COMPRESSIONS:
            raise ImageError(f"{where}: 'compression' must be one of {', '.join(_COMPRESSIONS)}")
        if entry.get("boot", DEFAULT_BOOT) not in _BOOT_MODES:
            raise ImageError(f"{where}: 'boot' must be one of {', '.join(_BOOT_MODES)}")
        out[name] = dict(entry)
    return out
