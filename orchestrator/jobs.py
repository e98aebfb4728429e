"""Guests side by side (`run -j N`): each planned run in its own worker process,
at most N at a time, results back in the order they were planned.

A worker is a fork of this process running runner.run_scenario for one scenario,
with its own artifacts folder (the run folder's name for it, as in a serial run),
its own guest, ports and SSH session. Its account is kept whole and printed when
it ends, so guests' lines never interleave; while it runs, each phase it starts is
one live line naming it. Ctrl-C reaches every worker (one process group); SIGTERM
to the run is passed on to them: each shuts its guest down and reports as
interrupted, as a serial run does.
"""
from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from orchestrator.plumbing.outcome import HarnessError, Outcome
from orchestrator.report import ConsoleReporter, ScenarioResult, wants_colour

INTERRUPT_GRACE_S = 60.0  # for the workers to shut their guests down once interrupted


class GuestReporter(ConsoleReporter):
    """One guest's account, kept until it ends; the phases it starts are shown live."""

    def __init__(self, live: TextIO, number: int, total: int):
        super().__init__(io.StringIO(), total=total)
        self.started = number - 1  # scenario_started counts it: [number/total]
        self.colour = wants_colour(live)
        self.live = live

    def phase_started(self, name: str, phase: str) -> None:
        super().phase_started(name, phase)
        print(f"   [{name}] {phase}", file=self.live, flush=True)

    def account(self) -> str:
        return self.stream.getvalue()


@dataclass
class _Worker:
    index: int
    process: multiprocessing.Process
    conn: multiprocessing.connection.Connection
    label: str


def _work(conn, run_one: Callable, scenario, run_dir: Path, options, label: str, number: int, total: int,
          live: TextIO) -> None:
    from orchestrator.runner import Interrupted
    reporter = GuestReporter(live, number, total)
    interrupted = False
    try:
        result = run_one(scenario, run_dir, options, reporter, label)
    except Interrupted as exc:
        result, interrupted = exc.result, True
    except KeyboardInterrupt:
        result, interrupted = _not_run(scenario, run_dir, label, "interrupted before it started"), True
    conn.send((result, reporter.account(), interrupted))
    conn.close()


def _not_run(scenario, run_dir: Path, label: str, why: str) -> ScenarioResult:
    return ScenarioResult(name=label, path=str(scenario.path), outcome=Outcome.ERROR, artifacts=run_dir / label,
                          error=HarnessError("run", f"not run: {why}"))


def run_side_by_side(planned: list[tuple[str, object]], jobs: int, run_one: Callable, run_dir: Path, options,
                     out: TextIO = sys.stderr) -> tuple[list[ScenarioResult], bool]:
    """Run each (label, scenario) with run_one(scenario, run_dir, options, reporter, label)
    in a worker, at most `jobs` at once. Returns the results in planned order and whether
    the run was interrupted (Ctrl-C or SIGTERM): those not started are 'not run'."""
    context = multiprocessing.get_context("fork")  # the scenario and options go as they are, unpickled
    results: list[ScenarioResult | None] = [None] * len(planned)
    running: dict[int, _Worker] = {}
    waiting = list(range(len(planned)))
    interrupted = False

    def finish(worker: _Worker, why_lost: str) -> None:
        nonlocal interrupted
        try:
            result, account, was_interrupted = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(5)
            result = _not_run(planned[worker.index][1], run_dir, worker.label, "")
            result.error = HarnessError("run", f"its worker process ended with exit code "
                                               f"{worker.process.exitcode} before reporting ({why_lost})")
            account = f"   ERROR {worker.label}: {result.error.message}\n"
            was_interrupted = False
        worker.process.join(5)
        worker.conn.close()
        interrupted = interrupted or was_interrupted
        results[worker.index] = result
        out.write(account)
        out.flush()
        del running[worker.index]

    try:
        while waiting or running:
            while waiting and len(running) < jobs and not interrupted:
                index = waiting.pop(0)
                label, scenario = planned[index]
                ours, theirs = context.Pipe(duplex=False)
                process = context.Process(target=_work, name=f"guest {label}",
                                          args=(theirs, run_one, scenario, run_dir, options, label, index + 1,
                                                len(planned), out))
                process.start()
                theirs.close()
                running[index] = _Worker(index, process, ours, label)
            if interrupted and not running:
                break
            ready = multiprocessing.connection.wait([w.conn for w in running.values()]
                                                    + [w.process.sentinel for w in running.values()], timeout=1.0)
            for worker in list(running.values()):
                if worker.conn in ready or worker.process.sentinel in ready:
                    finish(worker, "it crashed")
    except KeyboardInterrupt:
        interrupted = True
        # Ctrl-C reached the workers already; SIGTERM reached only this process: pass it on.
        for worker in running.values():
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)
        end = time.monotonic() + INTERRUPT_GRACE_S
        while running and time.monotonic() < end:
            try:
                multiprocessing.connection.wait([w.conn for w in running.values()]
                                                + [w.process.sentinel for w in running.values()], timeout=1.0)
            except KeyboardInterrupt:
                continue  # a second Ctrl-C: the guests are being shut down already
            for worker in list(running.values()):
                if worker.conn.poll() or not worker.process.is_alive():
                    finish(worker, "interrupted")
        for worker in list(running.values()):
            worker.process.kill()
            finish(worker, f"killed after {INTERRUPT_GRACE_S:g} s of shutting down")
    for index in waiting:
        label, scenario = planned[index]
        results[index] = _not_run(scenario, run_dir, label, "interrupted before it started")
    return [r for r in results if r is not None], interrupted
