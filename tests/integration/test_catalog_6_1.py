"""The whole catalog on Debian's 6.1 kernel, one test per scenario run (see catalog.py)."""
import pytest

from .catalog import RUN_NAMES, check_run, check_scenario, run_catalog


@pytest.fixture(scope="module")
def catalog_run(tmp_path_factory):
    return run_catalog(tmp_path_factory.mktemp("results"), "debian-6.1")


def test_every_scenario_ran_on_debian_6_1(catalog_run):
    check_run(catalog_run, "6.1.")


@pytest.mark.parametrize("name", RUN_NAMES)
def test_scenario_on_debian_6_1(catalog_run, name):
    check_scenario(catalog_run, name)
