"""guest-images/images.yaml: the named images, each a Debian kernel package glob plus options."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import yaml

from orchestrator.guest.images.errors import ImageError

DEFAULT_IMAGE = "debian-6.1"
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEFINITION_KEYS = {"kernel", "modules", "compression", "boot", "description", "suite", "pin", "newer_than"}
_SUITE = re.compile(r"^[a-z][a-z0-9.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
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
        _check_suite_keys(where, entry)
        out[name] = dict(entry)
    for name, entry in out.items():
        for other in entry.get("newer_than", ()):
            if other == name or "suite" not in out.get(other, {}):
                raise ImageError(f"image definitions {path}: {name!r}: newer_than names {other!r}, which is "
                                 f"not another image with a `suite`")
    return out


def _check_suite_keys(where: str, entry: dict) -> None:
    """`suite` (one or a list: fetched with a private apt), `pin` (version + {package: sha256}),
    `newer_than` (image names): see orchestrator/guest/images/suites.py."""
    if "suite" not in entry:
        if {"pin", "newer_than"} & set(entry):
            raise ImageError(f"{where}: 'pin' and 'newer_than' need a 'suite'")
        return
    suite = entry["suite"]
    suites = [suite] if isinstance(suite, str) else suite
    if not isinstance(suites, list) or not suites or not all(isinstance(s, str) and _SUITE.match(s) for s in suites):
        raise ImageError(f"{where}: 'suite' must be a Debian suite name (or a list of them), e.g. trixie-backports")
    pin = entry.get("pin")
    if pin is not None:
        if "newer_than" in entry:
            raise ImageError(f"{where}: a pinned image is one kernel: 'newer_than' is for unpinned ones")
        packages = pin.get("packages") if isinstance(pin, dict) else None
        if (not isinstance(pin.get("version") if isinstance(pin, dict) else None, str) or not isinstance(packages, dict)
                or not packages or not all(isinstance(p, str) and isinstance(h, str) and _SHA256.match(h)
                                           for p, h in packages.items())):
            raise ImageError(f"{where}: 'pin' needs version (a string) and packages (package: sha256 of its .deb)")
        images = [p for p in packages if p.startswith("linux-image-")]
        if len(images) != 1 or not fnmatch.fnmatchcase(images[0], entry["kernel"]):
            raise ImageError(f"{where}: 'pin' must name one linux-image- package, matching 'kernel' "
                             f"({entry['kernel']})")
    newer = entry.get("newer_than", [])
    if not isinstance(newer, list) or not all(isinstance(n, str) for n in newer):
        raise ImageError(f"{where}: 'newer_than' must be a list of image names")
