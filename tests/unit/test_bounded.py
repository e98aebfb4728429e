"""Bounded keeping: the first and last parts, a marker for what was cut."""
from orchestrator.observe import ConsoleFollower
from orchestrator.plumbing.bounded import HeadTail, cap_file


def test_head_tail_keeps_everything_within_the_limit():
    kept = HeadTail(100)
    kept.add(b"a" * 30)
    kept.add(b"b" * 70)
    assert kept.value() == b"a" * 30 + b"b" * 70 and kept.cut == 0


def test_head_tail_keeps_first_and_last_parts_of_a_flood():
    kept = HeadTail(1000)
    kept.add(b"start\n")
    for _ in range(10000):
        kept.add(b"x" * 1000)
    kept.add(b"\nthe end")
    value = kept.value()
    assert value.startswith(b"start\n") and value.endswith(b"\nthe end")
    assert b"bytes truncated here" in value and len(value) < 1100
    assert kept.cut == kept.total - 1000


def test_cap_file(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"boot line\n" + b"flood\n" * 100000 + b"last line\n")
    cut = cap_file(path, 10000)
    data = path.read_bytes()
    assert data.startswith(b"boot line\n") and data.endswith(b"last line\n")
    assert f"{cut} bytes truncated here".encode() in data and len(data) < 10100
    assert cap_file(path, 1 << 20) == 0


def test_console_follower_reads_only_what_is_new(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"one\ntw")
    follower = ConsoleFollower(path)
    assert follower.new_lines() == ["one"] and follower.partial == b"tw"
    with path.open("ab") as f:
        f.write(b"o\nthree\n")
    assert follower.new_lines() == ["two", "three"]
    assert follower.new_lines() == []


def test_line_log_keeps_first_and_last_lines():
    from orchestrator.plumbing.bounded import LineLog
    log = LineLog(head=3, tail=2)
    for n in range(100):
        log.append(str(n))
    assert log.lines() == ["0", "1", "2", "[... 95 lines truncated here by mce-orchestrator ...]", "98", "99"]


def test_line_log_is_bounded_in_bytes_too():
    from orchestrator.plumbing.bounded import LineLog
    log = LineLog(head_bytes=3000, tail_bytes=3000, line_bytes=1000)
    for n in range(1000):
        log.append(str(n % 10) * 1_000_000)
    kept = log.lines()
    assert sum(len(line) for line in kept) < 3000 + 3000 + 500
    assert kept[0].startswith("0" * 1000 + "... (line cut: 1000000 characters)")
    assert any("lines truncated here" in line for line in kept)
    assert kept[-1].startswith("9" * 1000)


def test_the_console_follower_misses_nothing_the_cut_keeps(tmp_path):
    """A line that arrives in the chunk crossing the cap is in console.log (in the kept
    latest part) and the follower reads it, though the file shrank under it."""
    import socket
    import time
    from orchestrator.plumbing.bounded import ConsoleRecorder
    ours, theirs = socket.socketpair()
    path = tmp_path / "console.log"
    recorder = ConsoleRecorder(ours, path, 64 << 10)
    recorder.start()
    follower = ConsoleFollower(path)

    def send(data: bytes) -> None:
        theirs.sendall(data)
        end = time.monotonic() + 5
        while recorder.total < sent[0] + len(data) and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.05)  # counted as received just before it is written
        sent[0] += len(data)

    sent = [0]
    send(b"boot line\n" + b"flood line\n" * 4000)  # 44 KB: under the cap
    assert follower.new_lines()[0] == "boot line"
    # This chunk crosses the cap: the file is cut to about half of it.
    send(b"flood line\n" * 2000 + b"Memory failure: 0x1234: recovery action for dirty LRU page: Recovered\n")
    assert path.stat().st_size < follower.offset  # the file shrank below where the follower stood
    lines = follower.new_lines()
    assert lines[-1] == "Memory failure: 0x1234: recovery action for dirty LRU page: Recovered"
    assert b"bytes truncated here" in path.read_bytes() and follower.lost > 0
    send(b"after the cut\n")
    assert follower.new_lines() == ["after the cut"]
    theirs.close()
    recorder.close()
