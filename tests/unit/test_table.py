"""The verdict table from runs' report.json files: one column per kernel while one QEMU ran them
all (the table as before the QEMU axis), one per (kernel, QEMU) pair once two did."""
import json

import pytest

from orchestrator.report.table import main, markdown, qemu_label

Q7 = "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
Q10 = "10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
K61, K612 = "6.1.0-57-amd64", "6.12.117+deb12-amd64"


def run(tmp_path, name, kernel, qemu, outcomes):
    folder = tmp_path / name
    folder.mkdir()
    scenarios = []
    for scenario, outcome in outcomes.items():
        checks = [] if outcome == "PASS" else [{"name": "SIGBUS", "outcome": "FAIL", "detail": "none"}]
        scenarios.append({"name": scenario, "outcome": outcome, "kernel_release": kernel, "checks": checks,
                          "error": None, "qemu": {"version": qemu, "binary": "/usr/bin/qemu-system-x86_64"}
                          if qemu else None})
    (folder / "report.json").write_text(json.dumps({"scenarios": scenarios}))
    return folder


def rows(table):
    return [line for line in table.splitlines() if line.startswith("|")]


def test_one_qemu_gives_the_kernel_columns_as_before(tmp_path):
    runs = [run(tmp_path, "a", K61, Q7, {"srao": "PASS", "race": "PASS"}),
            run(tmp_path, "b", K612, Q7, {"srao": "PASS", "race": "FAIL"})]
    table = markdown(runs)
    assert rows(table) == [f"| scenario | {K61} | {K612} |", "|---|---|---|",
                           "| race | PASS | FAIL (SIGBUS) |", "| srao | PASS | PASS |"]
    assert "QEMU" not in table  # no axis to show, no note about it


def test_reports_from_before_the_qemu_axis_still_make_the_kernel_table(tmp_path):
    runs = [run(tmp_path, "a", K61, None, {"srao": "PASS"}), run(tmp_path, "b", K612, None, {"srao": "PASS"})]
    assert rows(markdown(runs))[0] == f"| scenario | {K61} | {K612} |"


def test_two_qemus_give_a_column_per_kernel_and_qemu_each_kernels_side_by_side(tmp_path):
    # make matrix's order: QEMU by QEMU, kernel by kernel.
    runs = [run(tmp_path, "a", K61, Q7, {"srao": "PASS", "race": "PASS"}),
            run(tmp_path, "b", K612, Q7, {"srao": "PASS", "race": "PASS"}),
            run(tmp_path, "c", K61, Q10, {"srao": "PASS", "race": "FAIL"}),
            run(tmp_path, "d", K612, Q10, {"srao": "PASS", "race": "PASS"})]
    table = markdown(runs)
    assert rows(table)[:2] == [
        f"| scenario | {K61}, QEMU 7.2.22 | {K61}, QEMU 10.0.2 | {K612}, QEMU 7.2.22 | {K612}, QEMU 10.0.2 |",
        "|---|---|---|---|---|"]
    assert "| race | PASS | FAIL (SIGBUS) | PASS | PASS |" in table
    assert "| srao | PASS | PASS | PASS | PASS |" in table
    assert (f"Verdicts that differ between QEMUs on the same kernel: race on {K61}: QEMU 7.2.22: PASS; "
            "QEMU 10.0.2: FAIL (SIGBUS).") in table
    assert "`a`, `b`, `c`, `d`" in table


def test_two_qemus_that_agree_say_so(tmp_path):
    runs = [run(tmp_path, "a", K61, Q7, {"srao": "PASS"}), run(tmp_path, "b", K61, Q10, {"srao": "PASS"})]
    table = markdown(runs)
    assert rows(table)[0] == f"| scenario | {K61}, QEMU 7.2.22 | {K61}, QEMU 10.0.2 |"
    assert "Verdicts that differ between QEMUs on the same kernel: none." in table


def test_a_pair_that_did_not_run_a_scenario_says_not_run_and_a_pair_never_run_has_no_column(tmp_path):
    runs = [run(tmp_path, "a", K61, Q7, {"srao": "PASS", "race": "PASS"}),
            run(tmp_path, "b", K61, Q10, {"srao": "PASS"}),
            run(tmp_path, "c", K612, Q7, {"srao": "PASS", "race": "PASS"})]
    table = markdown(runs)
    assert rows(table)[0] == f"| scenario | {K61}, QEMU 7.2.22 | {K61}, QEMU 10.0.2 | {K612}, QEMU 7.2.22 |"
    assert "| race | PASS | not run | PASS |" in table


@pytest.mark.parametrize("qemu, label", [({"version": Q10}, "10.0.2"), ({"version": "8.2.0"}, "8.2.0"),
                                         ({"version": ""}, "?"), (None, "?"), ({}, "?")])
def test_qemu_label_is_the_version_number(qemu, label):
    assert qemu_label({"qemu": qemu}) == label


def test_update_writes_the_matrix_between_the_markers(tmp_path, capsys):
    runs = [run(tmp_path, "a", K61, Q7, {"srao": "PASS"}), run(tmp_path, "b", K61, Q10, {"srao": "FAIL"})]
    page = tmp_path / "verdicts.md"
    page.write_text("before\n<!-- verdict-table:start -->\nold\n<!-- verdict-table:end -->\nafter\n")
    assert main([str(r) for r in runs] + ["--update", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert f"| scenario | {K61}, QEMU 7.2.22 | {K61}, QEMU 10.0.2 |" in text
    assert "| srao | PASS | FAIL (SIGBUS) |" in text
