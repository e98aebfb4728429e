"""A panicked guest's console is read only once the panic line is whole and the console is quiet."""
import threading
import time
from types import SimpleNamespace

from orchestrator.observe import PANIC_QUIET_S, _wait_console_settled
from orchestrator.plumbing.deadline import Deadline


def test_waits_for_the_rest_of_a_panic_line_cut_in_the_middle(tmp_path):
    console = tmp_path / "console.log"
    console.write_text("[    6.689073] mce: [Hardware Error]: Machine check: Data load in unrecoverable area of kernel\n"
                       "[    6.689200] Kernel panic - not syncing: Fatal ma")

    def rest_of_line():
        time.sleep(0.3)  # a loaded host: the serial port's bytes arrive late
        with console.open("a") as f:
            f.write("chine check\n")
        time.sleep(0.2)
        with console.open("a") as f:
            f.write("[    6.731894] Kernel Offset: disabled\n")

    writer = threading.Thread(target=rest_of_line)
    writer.start()
    start = time.monotonic()
    _wait_console_settled(SimpleNamespace(console_log=console), Deadline(5, "panic text"))
    writer.join()
    text = console.read_text()
    assert "Kernel panic - not syncing: Fatal machine check\n" in text and text.endswith("Kernel Offset: disabled\n")
    assert time.monotonic() - start >= 0.5 + PANIC_QUIET_S - 0.05


def test_gives_up_at_its_deadline_when_the_line_never_ends(tmp_path):
    console = tmp_path / "console.log"
    console.write_text("[    6.689200] Kernel panic - not syncing: Fatal ma")
    start = time.monotonic()
    _wait_console_settled(SimpleNamespace(console_log=console), Deadline(1.0, "panic text"))
    assert 0.9 <= time.monotonic() - start < 2.0
