"""Pure parts of the libvirt backend (no libvirtd needed)."""
from orchestrator.backends import libvirt as backend


def test_domain_names_are_recognisable_and_unique():
    a, b = backend.domain_name(), backend.domain_name()
    assert a != b and a.startswith("mce-orch-")
    assert backend.domain_name(pid=42, n=7).endswith("-42-7")


def test_orphaned_domains_are_ours_on_this_host_with_a_dead_orchestrator():
    names = ["mce-orch-h1-100-1", "mce-orch-h1-200-3", "mce-orch-h2-100-1", "mce-orch-h1-100-x",
             "someone-elses-vm", "mce-orch-h1-300-2"]
    alive = {200}.__contains__
    assert backend.orphaned(names, "h1", alive) == ["mce-orch-h1-100-1", "mce-orch-h1-300-2"]
    assert backend.orphaned(names, "h1", lambda pid: True) == []
