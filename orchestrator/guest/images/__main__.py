"""python -m orchestrator.guest.images [NAME] [--kernel PATH [--modules DIR]]: build (or reuse) an
image, printing each step. `make image` runs this."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.guest.images import DEFAULT_IMAGE, ImageError, ensure_image

REPO_ROOT = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.guest.images", description=__doc__)
    parser.add_argument("name", nargs="?", default=DEFAULT_IMAGE, help="image in guest-images/images.yaml")
    parser.add_argument("--kernel", type=Path, help="a bzImage, a vmlinux or a kernel build tree")
    parser.add_argument("--modules", type=Path, help="an INSTALL_MOD_PATH holding lib/modules/RELEASE")
    parser.add_argument("--cache", type=Path, help="cache folder (default: guest-images/.cache)")
    args = parser.parse_args(argv)
    try:
        image = ensure_image(args.name, repo_root=REPO_ROOT, cache_root=args.cache, kernel=args.kernel,
                             modules=args.modules, progress=lambda message: print(message, flush=True))
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{image.name}: kernel {image.kernel_release} ({image.kernel}), initrd {image.initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
