"""The whole catalog on Debian's 6.12 kernel on the libvirt backend, against a real
libvirtd: each scenario run must give the verdict it gives on the QEMU backend
(test_catalog_6_12.py), its expected outcome (see catalog.py)."""
import pytest

from .catalog import RUN_NAMES, check_run, check_scenario, run_catalog
from .test_libvirt import libvirtd  # noqa: F401 -- the fixture that starts the daemons


@pytest.fixture(scope="module")
def catalog_run(libvirtd, tmp_path_factory):  # noqa: F811
    return run_catalog(tmp_path_factory.mktemp("results"), "debian-6.12", backend="libvirt")


def test_every_scenario_ran_on_libvirt_debian_6_12(catalog_run):
    check_run(catalog_run, "6.12.", backend="libvirt")


@pytest.mark.parametrize("name", RUN_NAMES)
def test_scenario_on_libvirt_debian_6_12(catalog_run, name):
    check_scenario(catalog_run, name, backend="libvirt")
