"""make bench's catalog part: serial and -j alternated, medians of the sums over kernels."""
import itertools

from orchestrator import bench


def test_the_catalog_part_alternates_and_reports_medians(tmp_path, monkeypatch, capsys):
    calls = []
    times = itertools.count(10)

    def fake_run(kernel, jobs, results):
        calls.append((kernel, jobs, results.name))
        return float(next(times)), "47 scenarios: 46 passed, 0 failed, 1 error"

    monkeypatch.setattr(bench, "catalog_run", fake_run)
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    serial, parallel = bench.catalog_bench(2, tmp_path, kernels=("k1", "k2"))
    # Warm-up once per kernel at -j 2, then per run: serial on both kernels, then -j on both.
    assert calls == [("k1", 2, "catalog-warm-up"), ("k2", 2, "catalog-warm-up"),
                     ("k1", 1, "catalog-j1-0"), ("k2", 1, "catalog-j1-0"),
                     ("k1", 2, "catalog-j2-0"), ("k2", 2, "catalog-j2-0"),
                     ("k1", 1, "catalog-j1-1"), ("k2", 1, "catalog-j1-1"),
                     ("k1", 2, "catalog-j2-1"), ("k2", 2, "catalog-j2-1")]
    # Sums per run: serial 12+13, 16+17; -j 14+15, 18+19.
    assert (serial, parallel) == (29.0, 33.0)
    out = capsys.readouterr()
    assert "one guest at a time median: 29.0 s (runs: 25.0, 33.0)" in out.out
    assert "-j 2 median: 33.0 s (runs: 29.0, 37.0); -j 2/serial median ratio 1.14" in out.out
    assert "1 error" in out.err  # every run's verdict counts are said


def test_a_catalog_run_that_printed_no_summary_says_why(tmp_path, monkeypatch):
    class Done:
        returncode = 2
        stdout = ""
        stderr = "mce-orchestrator: no such image: debian-9\n"

    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: Done())
    _, summary = bench.catalog_run("debian-9", 1, tmp_path)
    assert summary == "exit 2, no summary line (mce-orchestrator: no such image: debian-9)"


def test_the_qemu_part_alternates_qemus_run_by_run_and_reports_each(capsys):
    calls = []
    times = itertools.count(1)

    def measure(qemu, kind, i):
        calls.append((i, qemu, kind))
        return float(next(times))

    samples = bench.qemu_bench(3, ["system", "debian-backports"], measure)
    # Run by run, QEMU by QEMU: noise hits both alike.
    assert calls[:6] == [(0, "system", "bare"), (0, "system", "cold"), (0, "system", "restored"),
                         (0, "debian-backports", "bare"), (0, "debian-backports", "cold"),
                         (0, "debian-backports", "restored")]
    assert len(calls) == 18
    lines = bench.qemu_lines("srar-anon-access", samples, {"system": "7.2.22", "debian-backports": "10.0.2"})
    # system: bare 1, 7, 13 -> 7; cold 2, 8, 14 -> 8; restored 3, 9, 15 -> 9.
    assert lines[0].startswith("QEMU system (7.2.22), srar-anon-access, 3 runs each: bare median 7.00 s, "
                               "cold 8.00 s (ratio 1.14), restored 9.00 s (ratio 1.29); runs: bare 1.00, 7.00, 13.00")
    assert lines[1].startswith("QEMU debian-backports (10.0.2), srar-anon-access, 3 runs each: bare median 10.00 s")
    assert "run 3/3 on QEMU debian-backports: bare 16.00 s, cold 17.00 s, restored 18.00 s" in capsys.readouterr().err
