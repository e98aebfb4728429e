"""python -m orchestrator.guest.images [NAME] [--kernel PATH [--modules DIR]]: build (or reuse) an
image, printing each step. `make image` runs this.

For an image whose kernel comes from a suite of its own (images.yaml `suite`):
  --which NAME      print the kernel NAME means today; exit 5 when there is none (a `newer_than`
                    image whose suite has nothing newer), saying why
  --show-pin NAME   print the `pin:` block for the newest match in NAME's suite now (to move a pin)"""
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
    parser.add_argument("--which", action="store_true", help="print the kernel NAME means today (suite images)")
    parser.add_argument("--show-pin", action="store_true", help="print the pin for the newest kernel in NAME's suite")
    args = parser.parse_args(argv)
    if args.which or args.show_pin:
        return _suite_query(args)
    try:
        image = ensure_image(args.name, repo_root=REPO_ROOT, cache_root=args.cache, kernel=args.kernel,
                             modules=args.modules, progress=lambda message: print(message, flush=True))
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{image.name}: kernel {image.kernel_release} ({image.kernel}), initrd {image.initrd}")
    return 0


def _suite_query(args) -> int:
    from orchestrator.guest.images import suites
    from orchestrator.guest.images.definitions import load_image_definitions
    cache = args.cache or REPO_ROOT / "guest-images" / ".cache"
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        definitions = load_image_definitions(REPO_ROOT / suites.IMAGES_FILE)
        if "suite" not in definitions.get(args.name, {}):
            raise ImageError(f"image {args.name}: not an image with a `suite` in {suites.IMAGES_FILE}")
        if args.show_pin:
            print(suites.show_pin(args.name, definitions, cache, progress))
            return 0
        kernel = suites.resolve(args.name, definitions, cache, progress)
    except suites.NoNewerKernel as exc:
        print(exc)
        return 5
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: {kernel.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
