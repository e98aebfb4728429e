"""How often memory_failure() takes the page lock: learned from the kernel by the probe's
lock race, remembered per kernel build, and a run lost to learning is not forced."""
import json

from orchestrator.inject import races
from orchestrator.inject.races import page_locks
from orchestrator.inject.races.page_locks import PageLockCounts

BANNER_61 = "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3"
BANNER_612 = "Linux version 6.12.118+deb12-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.12.118-1~deb12u1"


def test_nothing_is_known_of_a_kernel_until_learned_and_each_build_apart(tmp_path):
    counts = PageLockCounts(tmp_path)
    assert counts.get(BANNER_61) == 0  # the probe is told 0: learn it
    counts.learn(BANNER_61, 1)
    counts.learn(BANNER_612 + "\n", 2)
    again = PageLockCounts(tmp_path)
    assert (again.get(BANNER_61), again.get(BANNER_612)) == (1, 2)
    # Another build of the "same" version is another kernel: its banner differs.
    assert again.get(BANNER_61.replace("6.1.192-3", "6.1.192-4")) == 0


def test_a_damaged_or_foreign_file_knows_nothing(tmp_path):
    for text in ("{", "[1, 2]", json.dumps({BANNER_61: 3, BANNER_612: "2"})):
        (tmp_path / page_locks.FILE).write_text(text)
        assert PageLockCounts(tmp_path).get(BANNER_61) == 0 and PageLockCounts(tmp_path).get(BANNER_612) == 0


def test_only_a_proven_count_is_learned():
    assert page_locks.learned({"learned_page_locks": 1, "error": page_locks.LEARNED_ONCE + ": ..."}) == 1
    assert page_locks.learned({"learned_page_locks": 2, "error": None}) == 2
    # Seen waiting again, but the rest of the interleaving was not: not proven.
    assert page_locks.learned({"learned_page_locks": 2, "error": "2: the mover was not seen"}) is None
    assert page_locks.learned({"learned_page_locks": 0, "error": "1b: memory_failure() was neither seen"}) is None
    assert page_locks.learned({"page_locks": 2, "error": None}) is None  # told, not learned
    assert page_locks.learned(None) is None and page_locks.learned("x") is None


def test_a_race_lost_to_learning_is_not_forced_and_other_errors_stay_verdicts():
    lost = page_locks.lost_to_learning({"learned_page_locks": 1, "error": page_locks.LEARNED_ONCE + ": this kernel"})
    assert lost is not None and races.not_forced(lost) and lost.phase == "inject"
    assert page_locks.lost_to_learning({"error": "2: the mover was not seen"}) is None
    assert page_locks.lost_to_learning({"error": None}) is None and page_locks.lost_to_learning(None) is None


def test_the_probe_prints_the_error_this_module_looks_for():
    from pathlib import Path
    source = (Path(page_locks.__file__).parents[2] / "probe" / "lock_race.c").read_text()
    assert f'"{page_locks.LEARNED_ONCE}' in source


def test_kernels_learned_at_once_by_parallel_guests_are_all_kept(tmp_path):
    # Separate processes, as run -j's guests are (a fork of pytest itself could inherit a held lock).
    import subprocess
    import sys
    banners = [f"{BANNER_612} build {n}" for n in range(8)]
    code = ("import sys; from pathlib import Path; from orchestrator.inject.races.page_locks import PageLockCounts; "
            "PageLockCounts(Path(sys.argv[1])).learn(sys.argv[2], 2)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), b]) for b in banners]
    assert [p.wait(timeout=60) for p in procs] == [0] * len(banners)
    assert all(PageLockCounts(tmp_path).get(b) == 2 for b in banners)
