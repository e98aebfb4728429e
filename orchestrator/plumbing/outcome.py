"""Outcomes and the errors that lead to them.

FAIL means the guest kernel did not do what the scenario expects; ERROR means
the harness, the host or the input is at fault and nothing can be said about
the kernel (the distinction tmt makes). The worst outcome wins. A scenario
can mark kernels as known to fail it (known_failures): there a failure that
shows the marked signature is KNOWN-FAIL (exit 0, like pytest's xfail) and a
pass is XPASS (exit 1, like a strict xfail that passed).
"""
from __future__ import annotations

import enum


class Outcome(enum.IntEnum):
    # Ordered by severity, so max() combines several outcomes. The exit code is
    # a separate mapping (a known failure exits 0 like a pass), monotonic in
    # that order, so the worst outcome's exit code is also the highest one.
    # SKIP (the kernel lacks an option the scenario needs: nothing was run) is
    # below PASS and never sets the exit code, unless every scenario of the run
    # was skipped (cli.NOTHING_TESTED_EXIT).
    SKIP = -1
    PASS = 0
    KNOWN_FAIL = 1   # failed as a known_failures mark says this kernel does
    XPASS = 2        # marked as known to fail on this kernel, but passed: the mark is stale
    FAIL = 3
    ERROR = 4

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]

    @property
    def label(self) -> str:
        """As reports show it: SKIP, PASS, KNOWN-FAIL, XPASS, FAIL, ERROR."""
        return self.name.replace("_", "-")


_EXIT_CODES = {Outcome.SKIP: 0, Outcome.PASS: 0, Outcome.KNOWN_FAIL: 0, Outcome.XPASS: 1, Outcome.FAIL: 1,
               Outcome.ERROR: 2}


def worst(outcomes) -> Outcome:
    return max(outcomes, default=Outcome.PASS)


class HarnessError(Exception):
    """The harness could not reach a verdict; carries the phase that failed."""

    def __init__(self, phase: str, message: str):
        super().__init__(message)
        self.phase = phase
        self.message = message

    def __str__(self) -> str:
        return f"{self.phase}: {self.message}"

    def __reduce__(self):
        # Whole, whatever a subclass's __init__ takes: a result crosses from a guest's
        # worker process (run -j) to the run's report.
        return _rebuild_error, (type(self), self.message, self.__dict__)


def _rebuild_error(cls, message: str, state: dict) -> HarnessError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class SetupError(HarnessError):
    """The host or QEMU failed before the kernel ran (QEMU fails the same way without
    the kernel, the guest image cannot be built): nothing is known about the kernel,
    and every other kernel would meet it too, so a bisection stops rather than skip."""


class InputError(Exception):
    """A user's mistake (bad scenario, unknown name): one line, no traceback."""
