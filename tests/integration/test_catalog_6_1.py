"""The whole catalog on Debian's 6.1 kernel (see catalog.py)."""
from .catalog import check_catalog_passes


def test_catalog_passes_on_debian_6_1(tmp_path):
    check_catalog_passes(tmp_path, "debian-6.1", "6.1.")
