"""Outcomes and the errors that lead to them.

FAIL means the guest kernel did not do what the scenario expects; ERROR means
the harness, the host or the input is at fault and nothing can be said about
the kernel (the distinction tmt makes). The worst outcome wins.
"""
from __future__ import annotations

import enum


class Outcome(enum.IntEnum):
    # Ordered by severity, so max() combines several outcomes.
    PASS = 0
    FAIL = 1
    ERROR = 2

    @property
    def exit_code(self) -> int:
        return int(self)


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


class InputError(Exception):
    """A user's mistake (bad scenario, unknown name): one line, no traceback."""
