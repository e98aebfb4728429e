"""Kernel-log expectations matched the way the kernel prints. Pure.

A log is split into messages: one per line, with the printk timestamp prefix
("[    1.234567] ", also "<6>" and "[T123]"/"[C1]" caller fields) and trailing
whitespace removed. An expectation matches a message as a WHOLE:

- a plain string ("Memory failure: {pfn:#x}: recovery action for dirty LRU
  page: Recovered") must equal the whole message, character for character,
  once its placeholders are filled in;
- {regex: "..."} is a Python regular expression that must match the whole
  message (it is anchored at both ends: write ".*" where more may follow).

A kernel_log_absent entry (find_anywhere) matches ANYWHERE in a message, plain
or regular expression alike: "Memory failure: {pfn:#x}" as an absent entry
fails on "Memory failure: 0x29aa: recovery action for ...", so an absent
entry can never be vacuous by being only a part of what the kernel prints.

Placeholders ({pfn:#x}, {gpa:x}, ... with Python format specs) are filled from
the run's evidence; in a regular expression the filled-in value is matched
literally and must end at a token boundary (no letter, digit or "_" after it),
so {pfn:#x} never matches the first digits of a longer number.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The values a kernel-log expectation can name (filled in by verdict.log_values).
PLACEHOLDERS = {
    "pfn": "the checked page's PFN (the injected page unless the scenario says otherwise)",
    "gpa": "that page's guest-physical address",
    "va": "the probe's target virtual address",
    "injected_pfn": "the PFN the machine check was injected at",
    "injected_gpa": "the guest-physical address the machine check was injected at",
    "pid": "the probe's process id",
    "child_pid": "the probe's forked child's process id (probe.processes: 2)",
}

_PREFIX = re.compile(r"^(?:<\d+>)?\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])? ?")
# "{{" and "}}" are literal braces in a plain line, as in Python's str.format.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([a-z_]+)(?::([^{}]*))?\}")
_BOUNDARY = r"(?![0-9A-Za-z_])"


class ExpectationError(ValueError):
    """An expectation that cannot be used: unknown placeholder, bad format spec or regex."""


@dataclass(frozen=True)
class LineExpectation:
    text: str            # as written in the scenario
    regex: bool = False  # True: text is a regular expression
    # True: text is a phrase of the kernel's own printk format, `values` its
    # conversions (placeholder names, None for any); see judge/printk.py.
    printk: bool = False
    values: tuple[str | None, ...] = ()

    def __str__(self) -> str:
        if self.printk:
            return f"printk {self.text!r} ({', '.join(v or 'any' for v in self.values) or 'no values'})"
        return f"/{self.text}/" if self.regex else f"'{self.text}'"


def messages(log: str, complete_only: bool = False) -> list[str]:
    """The kernel messages in `log`, without timestamps. complete_only drops a last
    line still being written (no newline yet), for polling a growing console."""
    lines = log.split("\n")
    if complete_only or lines[-1] == "":
        lines = lines[:-1]
    return [_PREFIX.sub("", line, count=1).rstrip() for line in lines]


def compile_expectation(expectation: LineExpectation, values: dict[str, int]) -> re.Pattern:
    """The expectation as one pattern for re.fullmatch, its placeholders filled from
    `values`. Raises KeyError for a value this run does not have, ExpectationError
    for an expectation no run could use."""
    if expectation.printk:
        raise ExpectationError(f"{expectation}: the kernel's format must be looked up first (judge/printk.py)")
    parts, pos = [], 0
    for match in _PLACEHOLDER.finditer(expectation.text):
        parts.append(_literal(expectation, expectation.text[pos:match.start()]))
        pos = match.end()
        if match.group(1):
            parts.append(re.escape(_value(match, values)) + _BOUNDARY)
        else:  # "{{" or "}}"
            parts.append(match.group(0) if expectation.regex else re.escape(match.group(0)[0]))
    parts.append(_literal(expectation, expectation.text[pos:]))
    try:
        return re.compile("".join(parts))
    except re.error as exc:
        raise ExpectationError(f"not a valid regular expression: {exc}") from None


_BRACE_HINT = "placeholders look like {pfn:#x}; write {{ for a brace"


def _value(match: re.Match, values: dict[str, int]) -> str:
    name, spec = match.group(1), match.group(2) or ""
    if name not in PLACEHOLDERS:
        raise ExpectationError(f"unknown placeholder {{{name}}} (known: {', '.join(PLACEHOLDERS)}; "
                               f"write {{{{ for a brace)")
    try:
        return format(values[name], spec)
    except ValueError as exc:
        raise ExpectationError(f"cannot be filled in: {match.group(0)}: {exc} ({_BRACE_HINT})") from None


def _literal(expectation: LineExpectation, text: str) -> str:
    if expectation.regex:
        return text  # braces there are the regular expression's own
    if "{" in text or "}" in text:
        # As in str.format: a lone brace is a mistake, not text.
        raise ExpectationError(f"cannot be filled in: a single '{{' or '}}' in {text!r} ({_BRACE_HINT})")
    return re.escape(text)


def validate(expectation: LineExpectation) -> None:
    """Raise ExpectationError if no run could use this expectation (checked when loading;
    a printk entry's format is checked against the kernel under test, when it is known)."""
    if expectation.printk:
        unknown = [v for v in expectation.values if v is not None and v not in PLACEHOLDERS]
        if unknown:
            raise ExpectationError(f"unknown value {unknown[0]!r} (known: {', '.join(PLACEHOLDERS)}, "
                                   f"or null for any)")
        return
    compile_expectation(expectation, {name: 0x1234 for name in PLACEHOLDERS})


def fill(text: str, values: dict[str, int]) -> str:
    """A plain expectation with its placeholders filled in (for messages to the user)."""
    return _PLACEHOLDER.sub(lambda m: _value(m, values) if m.group(1) else m.group(0)[0], text)


def find(log: str, pattern: re.Pattern, complete_only: bool = False) -> list[str]:
    """Every message of `log` that `pattern` matches whole."""
    return [m for m in messages(log, complete_only) if pattern.fullmatch(m)]


def find_anywhere(log: str, pattern: re.Pattern) -> list[str]:
    """Every message of `log` that `pattern` matches anywhere in (kernel_log_absent)."""
    return [m for m in messages(log) if pattern.search(m)]
