"""Kernel-log expectations spelled by the kernel under test itself. Pure.

A scenario can name a message by a phrase of its printk format instead of
its wording ({printk: "disabled after HW memory failure", values: [pfn]}):
the kernel's own format string that holds the phrase is looked up in its
.rodata (6.1: "Unpoison: Disabled after HW memory failure %#lx", 6.12:
"Unpoison: %#lx: disabled after HW memory failure") and becomes a whole-message
expectation, its conversions filled in order from `values` (a placeholder name,
or None for "any value"). A kernel that rewords the message needs no
kernel_variants entry; a kernel that lacks it, or holds the phrase in more than
one format, cannot be judged on it (an ERROR that says which).
"""
from __future__ import annotations

import re

from orchestrator.judge.logmatch import PLACEHOLDERS, ExpectationError, LineExpectation

# printk's level prefix: KERN_SOH ("\001") and the level ("0"-"7", "c" for KERN_CONT, "d" for default).
_LEVEL = re.compile(r"^\x01[0-7cd]")
# One printf conversion as the kernel's vsnprintf() reads it (no positional arguments there;
# %p takes the letters after it as its extension: %pGp, %pK, %pS).
_CONVERSION = re.compile(r"%(?P<flags>[-+ #0]*)(?P<width>\d+|\*)?(?:\.(?P<precision>\d+|\*))?"
                         r"(?P<length>hh|h|ll|l|z|Z|t|j|L)?(?P<type>[diouxXcs%]|p[A-Za-z0-9]*)")
# What an unnamed value (None) of each conversion type can print.
_ANY = {"d": r"-?\d+", "i": r"-?\d+", "u": r"\d+", "o": r"[0-7]+", "x": r"(?:0x)?[0-9a-f]+",
        "X": r"(?:0X)?[0-9A-F]+", "c": r".", "s": r".*?", "p": r"\S*"}


def formats_with(strings: list[str], phrase: str) -> list[str]:
    """The distinct printk formats among a kernel's strings that hold `phrase` (any
    case), without their level prefix and final newline. A printk format is a string
    with a level prefix, as every pr_*() gives it: a tracepoint's output format or a
    symbol's name that holds the phrase is not one."""
    wanted = phrase.lower()
    found = []
    for s in strings:
        if _LEVEL.match(s) and wanted in s.lower():
            fmt = s[2:]
            fmt = fmt[:-1] if fmt.endswith("\n") else fmt
            if fmt not in found:
                found.append(fmt)
    return found


def the_format(formats: list[str], phrase: str, kernel: str) -> str:
    """The one format that holds `phrase`; ExpectationError if there is none or more than one."""
    if not formats:
        raise ExpectationError(f"kernel {kernel} has no printk format holding {phrase!r}: "
                               f"it cannot print the expected message")
    if len(formats) > 1:
        shown = "; ".join(repr(f) for f in formats[:3]) + ("; ..." if len(formats) > 3 else "")
        raise ExpectationError(f"kernel {kernel} has {len(formats)} printk formats holding {phrase!r} "
                               f"({shown}): name a longer phrase")
    return formats[0]


def expectation(fmt: str, values: tuple[str | None, ...]) -> LineExpectation:
    """The whole-message expectation (a regular expression with placeholders) that
    `fmt` prints with `values` in its conversions."""
    if "\n" in fmt:
        raise ExpectationError(f"the format {fmt!r} prints more than one line")
    parts, pos, used = [], 0, 0
    for conv in _CONVERSION.finditer(fmt):
        parts.append(_escape(fmt[pos:conv.start()]))
        pos = conv.end()
        kind = conv.group("type")
        if kind == "%":
            parts.append("%")
            continue
        if "*" in (conv.group("width") or "") + (conv.group("precision") or ""):
            raise ExpectationError(f"the format {fmt!r} takes a width from its arguments ({conv.group(0)})")
        if used >= len(values):
            raise ExpectationError(f"the format {fmt!r} has more conversions than the {len(values)} "
                                   f"value(s) given")
        name = values[used]
        used += 1
        parts.append(_any(conv) if name is None else _named(fmt, conv, name))
    parts.append(_escape(fmt[pos:]))
    if used != len(values):
        raise ExpectationError(f"the format {fmt!r} has {used} conversion(s), {len(values)} value(s) given")
    return LineExpectation("".join(parts), regex=True)


_SPECIAL = {c: "\\" + c for c in ".^$*+?()[]\\|"} | {"{": "\\x7b", "}": "\\x7d"}


def _escape(text: str) -> str:
    # Only what a regular expression reads as syntax, so the expectation stays legible;
    # braces as escapes, so that logmatch never reads the kernel's text as a placeholder.
    return "".join(_SPECIAL.get(c, c) for c in text)


def _any(conv: re.Match) -> str:
    pad = " *" if conv.group("width") else ""
    return pad + _ANY[conv.group("type")[0]]


def _named(fmt: str, conv: re.Match, name: str) -> str:
    kind = conv.group("type")
    if name not in PLACEHOLDERS:
        raise ExpectationError(f"unknown value {name!r} (known: {', '.join(PLACEHOLDERS)}, or null for any)")
    if kind not in "diouxX":
        raise ExpectationError(f"the format {fmt!r} prints {conv.group(0)}, not a number: give null for it")
    flags, width = conv.group("flags"), conv.group("width") or ""
    spec = ("#" if "#" in flags else "") + ("0" if "0" in flags and width else "") + width
    spec += {"i": "d", "u": "d"}.get(kind, kind)
    return f"{{{name}:{spec}}}"
