"""monitor-commands.log -> HMP lines: every backend's log is turned into lines, never an exception."""
from orchestrator.report.repro import hmp_lines


def test_a_libvirt_backend_log_with_non_json_arguments():
    log = ("    0.000 hmp hostfwd_add hostnet0 tcp:127.0.0.1:56305-:22\n"
           "    0.002 getfd mce-incoming\n"
           '    0.003 migrate-incoming {"uri": "fd:mce-incoming"}\n'
           "    0.638 hmp mce 0 9 0xbd000000000000c0 0x5 0x3054000 0x8c\n")
    lines = hmp_lines(log)
    assert lines[0] == "hostfwd_add hostnet0 tcp:127.0.0.1:56305-:22"
    assert lines[1] == "# getfd mce-incoming (no HMP equivalent)"
    assert lines[-1] == "mce 0 9 0xbd000000000000c0 0x5 0x3054000 0x8c"
