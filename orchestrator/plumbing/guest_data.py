"""Reading what the guest says, defensively. Pure.

Everything the guest prints (the probe's JSON lines, the page-flags answer,
/proc files) may be garbage when the kernel under test is broken: a value
that is not what the probe prints becomes an `Unreadable` naming the field
and quoting the value, never a crash.
"""
from __future__ import annotations

import json
import re

U64 = 1 << 64
MAX_LINE = 1 << 20  # the longest probe line, the ready report of 4096 pages, is ~200 KiB
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}")


class Unreadable(ValueError):
    """A guest-provided value that is not what the probe prints."""


def shown(value, limit: int = 120) -> str:
    """A guest-provided value quoted for a message, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value) if _jsonable(value) else repr(value)
    return repr(text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)")


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def json_message(line: str) -> dict | None:
    """One probe line as a JSON object, or None (not JSON, not an object, numbers too
    long for Python's int conversion, nested too deep)."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None


def hex_field(message: dict, key: str, who: str = "the probe") -> int:
    """An address the probe prints as "0x..."."""
    value = message.get(key)
    if isinstance(value, str) and _HEX.fullmatch(value):
        return int(value, 16)
    raise Unreadable(f"{who} reported an unreadable {key}: {shown(value)}")


def int_field(message: dict, key: str, who: str = "the probe", low: int = 0, high: int = U64) -> int:
    value = message.get(key)
    if type(value) is int and low <= value < high:
        return value
    raise Unreadable(f"{who} reported an unreadable {key}: {shown(value)}")


def bool_field(message: dict, key: str, who: str = "the probe") -> bool:
    value = message.get(key)
    if type(value) is bool:
        return value
    raise Unreadable(f"{who} reported an unreadable {key}: {shown(value)}")


def int_list_field(message: dict, key: str, who: str = "the probe") -> list[int]:
    value = message.get(key, [])
    if isinstance(value, list) and all(type(v) is int for v in value):
        return value
    raise Unreadable(f"{who} reported an unreadable {key}: {shown(value)}")


def check_ready(ready: dict) -> None:
    """The probe's "ready" report has every field the harness uses, each of its type."""
    who = "the probe's ready report"
    for key in ("pid", "page_size", "target", "pfn", "free_pfn", "processes"):
        int_field(ready, key, who)
    for key in ("va", "gpa", "loop_start", "loop_end"):
        hex_field(ready, key, who)
    for key in ("huge", "thp", "merged"):
        bool_field(ready, key, who)
    if not 1 <= ready["page_size"] <= 1 << 30:
        raise Unreadable(f"{who} has an unreadable page_size: {shown(ready['page_size'])}")
    pages = ready.get("pages")
    if not isinstance(pages, list) or not ready["target"] < len(pages):
        raise Unreadable(f"{who} has an unreadable pages list: {shown(pages)}")
    for page in pages:
        if not isinstance(page, dict):
            raise Unreadable(f"{who} has an unreadable page: {shown(page)}")
        hex_field(page, "va", who)
        int_field(page, "pfn", who)


def parse_kpageflags(output: str, pfn: int | None) -> int:
    """The flags word from the probe's `--kpageflags PFN` line; other lines are ignored,
    anything that is not one clear answer for that PFN is Unreadable."""
    found = set()
    for line in output.splitlines():
        message = json_message(line)
        if message is not None and message.get("event") == "kpageflags":
            if message.get("pfn") != pfn:
                raise Unreadable(f"page-flags answer for another PFN than {pfn}: {shown(line)}")
            found.add(int_field(message, "flags", "the page-flags answer"))
    if len(found) != 1:
        raise Unreadable(f"{'no' if not found else 'more than one'} page-flags answer for PFN {pfn}: "
                         f"{shown(output)}")
    return found.pop()


_HW_CORRUPTED = re.compile(r"^HardwareCorrupted:\s+(\d{1,19}) kB", re.M)


def hardware_corrupted(meminfo: str) -> int | None:
    match = _HW_CORRUPTED.search(meminfo)
    return int(match.group(1)) if match else None


_SYSLOG_PREFIX = re.compile(r"<(\d{1,4})>")
# What `dmesg` reads with its prefixes kept (busybox -r, util-linux --raw): every record
# starts "<(facility << 3) | level>"; the kernel's own records have facility 0, and
# writes to /dev/kmsg from userspace get facility 1 (user) or whatever nonzero one they
# name (devkmsg_write() never lets them have 0).
KERNEL_LOG_COMMAND = "dmesg -r 2>/dev/null || dmesg"


def kernel_records(raw: str) -> tuple[str, list[str]]:
    """(the kernel's own lines with their prefixes removed, the lines userspace wrote) from
    KERNEL_LOG_COMMAND's output. A line without a prefix belongs to the record before it
    (a dmesg without -r prints none: then everything counts as the kernel's, as before)."""
    kernel: list[str] = []
    user: list[str] = []
    ours = True
    for line in raw.splitlines():
        prefix = _SYSLOG_PREFIX.match(line)
        if prefix:
            ours = int(prefix.group(1)) >> 3 == 0
            line = line[prefix.end():]
        (kernel if ours else user).append(line)
    return "".join(line + "\n" for line in kernel), user
