"""Scenario files: YAML -> validated, frozen dataclasses.

The schema is a file beside this module (scenario.schema.json) so editors can
use it too. Every error is one line naming the file, the line and the key.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field, replace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

from orchestrator.guest import memory_map


from orchestrator.guest.images.pmem import MIN_RAM_MIB as PMEM_MIN_RAM_MIB


from orchestrator.inject import mce


from orchestrator.judge import logmatch


from orchestrator.judge.logmatch import LineExpectation


from orchestrator.plumbing.outcome import InputError



SCHEMA_PATH = Path(__file__).with_name("scenario.schema.json")
MAX_SCENARIO_BYTES = 256 * 1024

# Tags the safe loader resolves implicitly; anything else (!!python/..., !!binary,
# custom tags) is refused rather than interpreted.
_PLAIN_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")
}


_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # the schema's name pattern
MAX_DEPTH = 16  # scenarios nest three levels; anything deeper is not a scenario


class ScenarioError(InputError):
    def __init__(self, file: Path | str, line: int | None, key: str, message: str):
        where = f"{file}:{line}" if line else f"{file}"
        # Always one line, whatever the YAML parser's message or a hostile key looked like.
        key = key if key.isprintable() else repr(key)
        super().__init__(" ".join(f"{where}: {key + ': ' if key else ''}{message}".split()))


# A NUMA node smaller than this leaves the guest kernel little to boot with on node 0.
NUMA_NODE_MIN_MIB = 128


@dataclass(frozen=True)
class GuestSpec:
    image: str = "debian-6.1"
    memory_mib: int = 512
    vcpus: int = 1
    numa_nodes: int = 1            # guest RAM split into this many NUMA nodes (vCPUs on node 0)
    machine: str = "pc"
    sysctl: tuple[tuple[str, int], ...] = ()
    disk_mib: int | None = None    # an ext4 disk mounted at /mnt
    swap_mib: int | None = None    # a swap file of this size on that disk, swapped on
    pmem_mib: int | None = None    # a legacy pmem range of guest RAM, ext4 -o dax at /mnt
    sysfs: tuple[tuple[str, str], ...] = ()   # (path under /sys, value), written in order
    disk_image: Path | None = None  # a user's cloud-init disk image booted instead of `image`


@dataclass(frozen=True)
class ProbeSpec:
    pages: int = 4
    target: int = 1
    mode: Literal["wait", "busy"] = "wait"
    cpu: int = 0
    after_inject: tuple[str, ...] = ()   # steps after the injection; () = wait for a signal
    memory: str = "anon"
    file_state: str = "dirty"
    processes: int = 1


@dataclass(frozen=True)
class InjectSpec:
    fields: mce.MceFields | None   # None: no machine check (preset: none)
    preset: str | None
    cpu: int = 0
    broadcast: bool = False
    page_offset: int = 0
    address: int | None = None
    gate: Literal["user-mode", "kernel-mode", "none"] = "none"
    count: int = 1
    each_vcpu: bool = False   # run once per vCPU (see expand)
    region: Literal["probe", "kernel-code", "free-page", "free-huge-page", "outside-ram"] = "probe"
    interval_s: float | None = None
    # an interleaving forced through QEMU's gdbstub (highorder.py, recompound.py)
    race: Literal["take-free-block", "retake-thp-block"] | None = None


@dataclass(frozen=True)
class SigbusExpectation:
    code: str
    addr: Literal["target_page", "any"] = "target_page"
    lsb: int | None = None


@dataclass(frozen=True)
class EventExpectation:
    action_required: bool
    action: str = "inject"


# "none" means "must not happen"; None means "not checked".
NONE = "none"


@dataclass(frozen=True)
class Expectations:
    sigbus: SigbusExpectation | Literal["none"] | None = None
    # no-page: kpageflags shows only KPF_NOPAGE; no-flags: it shows 0 (6.15+ for a PFN with no online memmap)
    page_poisoned: bool | Literal["no-page", "no-flags"] | None = None
    hardware_corrupted_kb: int | None = None
    kernel_log: tuple[LineExpectation, ...] = ()         # whole messages that must be in the log
    kernel_log_absent: tuple[LineExpectation, ...] = ()  # ... that must not
    memory_failure_event: EventExpectation | Literal["none"] | None = None
    other_pages_intact: bool | None = None
    guest: Literal["alive", "panic"] = "alive"
    fsync: tuple[str, ...] | None = None
    reread: str | None = None
    collapse: str | None = None
    soft_offline: str | None = None
    soft_poison: str | None = None
    unpoison: str | None = None
    madvise_hwpoison: str | None = None
    target_moved: bool | None = None
    ksm_remerge: str | None = None
    ras_record: bool | None = None      # the guest's RAS daemon logged the injected bank, status, address
    huge_regions_after_collapse: tuple[bool, ...] | None = None
    no_kernel_bugs: bool = True
    checked_page: Literal["injected", "target"] | None = None  # None: see runner.checked_pfn


# A kernel_log line that is the kernel's own record of a machine check (what mce/ and
# memory-failure.c, the RAS CEC and the panic path print, or a line naming the
# injected page), not a line any boot prints.
_MCE_RECORD = re.compile(r"memory failure|\bmce\b|hardware error|machine check|soft-offlining|hwpoison"
                         r"|\{(?:injected_)?(?:pfn|gpa)\b", re.IGNORECASE)


def saw_the_machine_check(e: Expectations) -> bool:
    """Whether some expectation can only hold if the guest kernel noticed the machine
    check: its own record of it, or what it did about it. A MEMORY_FAILURE event only
    says QEMU sent it; "none", "false", absent lines and a live guest hold anyway."""
    return (isinstance(e.sigbus, SigbusExpectation) or e.page_poisoned is True
            or bool(e.hardware_corrupted_kb) or e.ras_record is True
            or any(_MCE_RECORD.search(line.text) for line in e.kernel_log))


@dataclass(frozen=True)
class Timeouts:
    boot: float = 120.0
    ssh: float = 60.0
    locate: float = 30.0
    inject: float = 30.0
    observe: float = 30.0


@dataclass(frozen=True)
class KernelVariant:
    condition: str          # e.g. ">=6.12"
    because: str
    expect: Expectations    # the whole effective expectation on matching kernels
    skip: bool = False      # the scenario cannot be set up there: SKIP, `because` says why
    config: tuple[str, ...] = ()  # options (no CONFIG_) the kernel's .config must set too, where it is known


@dataclass(frozen=True)
class KnownFailure:
    """A guest kernel bug this scenario runs into: on matching kernels, a failure
    whose every failed check the marked crash report explains is KNOWN-FAIL, a
    pass is XPASS (see known_failures.py)."""
    condition: str          # e.g. ">=6.12"
    because: str
    signature: str          # how the crash report's first line starts
    task: str               # the task it hit ("Comm: ksmd")
    function: str           # the function it was in ("RIP: 0010:memcmp+0x6/0x50")
    explains: tuple[str, ...] = ()  # checks beside "no kernel bugs" that this crash makes fail


# The checks a known-failure mark may say its crash makes fail (beside "no kernel bugs").
EXPLAINABLE_CHECKS = ("guest alive", "probe ended", "sigbus", "sigbus (child)", "other pages intact",
                      "page poisoned", "HardwareCorrupted", "ksmd scanned again", "RAS daemon record")


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    guest: GuestSpec
    probe: ProbeSpec
    inject: InjectSpec
    expect: Expectations
    timeouts: Timeouts = field(default_factory=Timeouts)
    kernel_variants: tuple[KernelVariant, ...] = ()
    known_failures: tuple[KnownFailure, ...] = ()

    def known_failure(self, release: str) -> KnownFailure | None:
        """The known failure marked for kernel `release`, if any (the last matching entry wins)."""
        chosen = None
        for known in self.known_failures:
            if kernel_matches(known.condition, release):
                chosen = known
        return chosen

    def for_kernel(self, release: str, config: Mapping[str, str] | None = None) -> tuple["Scenario", KernelVariant | None]:
        """This scenario with the expectations that hold on kernel `release` (e.g. '6.12.117+deb12-amd64')
        and, where its .config is known (kconfig.parse), the options a variant depends on."""
        chosen = None
        for variant in self.kernel_variants:
            if kernel_matches(variant.condition, release) and (
                    config is None or all(config.get(option) in ("y", "m") for option in variant.config)):
                chosen = variant
        if chosen is None:
            return self, None
        return replace(self, expect=chosen.expect), chosen


_VERSION = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_CONDITION = re.compile(r"^(>=|<=|>|<|==)?(\d+(?:\.\d+){0,2})$")


def kernel_version(release: str) -> tuple[int, int, int]:
    match = _VERSION.match(release)
    if not match:
        raise ValueError(f"cannot read a version from kernel release {release!r}")
    return tuple(int(part or 0) for part in match.groups())  # type: ignore[return-value]


def kernel_matches(condition: str, release: str) -> bool:
    """'>=6.12' against '6.12.117+deb12-amd64'; a bare '6.1' means that major.minor series."""
    op, version = _CONDITION.match(condition).groups()
    want = tuple(int(p) for p in version.split("."))
    have = kernel_version(release)[:len(want)] if not op else kernel_version(release)
    want = want + (0,) * (3 - len(want)) if op else want
    return {None: have == want, "==": have == want, ">=": have >= want, "<=": have <= want,
            ">": have > want, "<": have < want}[op]


def _pattern(validator, pattern: str, instance, schema):
    # ECMA-262's '$' is the end of the string; Python's also matches before a final
    # newline, which would let "debian-6.1\n" or "vm.max_map_count\n" through.
    if validator.is_type(instance, "string") and not re.search(re.sub(r"(?<!\\)\$$", r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# JSON Schema calls 512.0 an integer; for addresses and counts it is not one.
# Nor is .nan or .inf a number of seconds: a NaN deadline never expires.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    validators={"pattern": _pattern},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
        "integer": lambda _checker, value: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda _checker, value: (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, float) and math.isfinite(value)),
    }))

def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


# --- YAML with line numbers ---------------------------------------------------

def _compose(path: Path, text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ScenarioError(path, line, "", f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(path, None, "", f"not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ScenarioError(path, None, "", "not valid YAML: nested too deeply") from None


def _to_python(path: Path, node: yaml.Node, lines: dict[tuple, int], at: tuple = (),
               seen: set[int] | None = None) -> Any:
    """Build plain data from the node tree, recording the line of every key."""
    seen = set() if seen is None else seen
    line = node.start_mark.line + 1
    if id(node) in seen:
        # The composer hands an alias back as the anchored node itself.
        raise ScenarioError(path, line, _dotted(at), "YAML aliases (*name) are not allowed")
    seen.add(id(node))
    if len(at) > MAX_DEPTH:
        raise ScenarioError(path, line, _dotted(at[:MAX_DEPTH]), f"nested deeper than {MAX_DEPTH} levels")
    if node.tag not in _PLAIN_TAGS:
        raise ScenarioError(path, line, _dotted(at), f"YAML tag {node.tag} is not allowed")
    lines.setdefault(at, line)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _to_python(path, key_node, {}, at, seen)
            if not isinstance(key, str):
                raise ScenarioError(path, key_node.start_mark.line + 1, _dotted(at), f"key {key!r} must be a string")
            if not key.isprintable() or key != key.strip():
                raise ScenarioError(path, key_node.start_mark.line + 1, _dotted(at),
                                    f"key {key!r} has control characters or surrounding blanks")
            if key in out:
                raise ScenarioError(path, key_node.start_mark.line + 1, _dotted(at + (key,)), "duplicated key")
            lines[at + (key,)] = key_node.start_mark.line + 1
            out[key] = _to_python(path, value_node, lines, at + (key,), seen)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(path, item, lines, at + (i,), seen) for i, item in enumerate(node.value)]
    return yaml.SafeLoader("").construct_object(node)


def _dotted(at: tuple) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in at).replace(".[", "[")


# --- schema errors as one line ------------------------------------------------

_JSON_TYPES = {"integer": "an integer", "number": "a finite number", "string": "a string",
               "object": "a mapping", "array": "a list", "boolean": "true or false"}


def _schema_message(error: jsonschema.ValidationError) -> tuple[tuple, str]:
    at = tuple(error.absolute_path)
    v, inst = error.validator, error.instance
    if v == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in inst if k not in allowed)
        return at + (unknown[0],), f"unknown key (expected one of: {', '.join(sorted(allowed))})"
    if v == "required":
        missing = [k for k in error.validator_value if k not in inst]
        return at, f"missing key '{missing[0]}'"
    if v == "type":
        return at, f"expected {_JSON_TYPES.get(error.validator_value, error.validator_value)}, got {inst!r}"
    if v == "enum":
        return at, f"expected one of {', '.join('null' if v is None else str(v) for v in error.validator_value)}; got {inst!r}"
    if v in ("minimum", "maximum", "exclusiveMinimum"):
        word = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">"}[v]
        return at, f"expected a value {word} {error.validator_value}, got {inst!r}"
    if v == "oneOf" and at == ("inject",):
        return at, "give exactly one of 'preset' or 'raw'"
    if v == "oneOf" and len(at) >= 2 and at[-2] in ("kernel_log", "kernel_log_absent"):
        return at, (f"expected a string (the whole message), a mapping {{regex: ...}} or "
                    f"{{printk: PHRASE, values: [...]}}; got {inst!r}")
    if v == "oneOf":
        return at, f"expected 'none' or a mapping of {', '.join(_oneof_keys(error))}; got {inst!r}"
    if v == "pattern" and error.validator_value == _schema()["$defs"]["log_text"]["pattern"]:
        return at, f"{inst!r} has control characters (a kernel log line has none)"
    if v == "pattern" or v == "propertyNames":
        return at, f"{inst!r} is not an allowed name"
    return at, error.message


def _oneof_keys(error: jsonschema.ValidationError) -> list[str]:
    keys: list[str] = []
    for option in error.validator_value:
        keys.extend(option.get("properties", {}))
    return keys


def _line_for(lines: dict[tuple, int], at: tuple) -> int | None:
    while at not in lines and at:
        at = at[:-1]
    return lines.get(at)


# --- loading -------------------------------------------------------------------

def load_scenario(path: Path) -> Scenario:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SCENARIO_BYTES:
            raise ScenarioError(path, None, "", f"file is {size} bytes; scenarios are at most {MAX_SCENARIO_BYTES}")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(path, None, "", "not UTF-8 text") from None
    except OSError as exc:
        raise ScenarioError(path, None, "", f"cannot read: {exc.strerror}") from None
    return parse_scenario(text, path)


def parse_scenario(text: str, path: Path) -> Scenario:
    node = _compose(path, text)
    if node is None:
        raise ScenarioError(path, 1, "", "empty file; expected a mapping with description, inject and expect")
    lines: dict[tuple, int] = {}
    data = _to_python(path, node, lines)
    if not isinstance(data, dict):
        raise ScenarioError(path, 1, "", "expected a mapping at the top level")

    validator = _Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        at, message = _schema_message(error)
        raise ScenarioError(path, _line_for(lines, at), _dotted(at), message)

    def fail(at: tuple, message: str):
        raise ScenarioError(path, _line_for(lines, at), _dotted(at), message)

    name = data.get("name", path.stem)
    if name != path.stem:
        fail(("name",), f"'{name}' does not match the file name '{path.stem}'")
    if not _NAME.fullmatch(name):
        # Names become folders under results/: the same rule as an explicit name.
        raise ScenarioError(path, None, "", f"the file name gives the scenario name {name!r}, which is not "
                                            f"allowed (lower-case letters, digits, '.', '_', '-'; at most 64)")

    guest_data = data.get("guest", {})
    guest = GuestSpec(
        image=guest_data.get("image", GuestSpec.image),
        memory_mib=guest_data.get("memory_mib", GuestSpec.memory_mib),
        vcpus=guest_data.get("vcpus", GuestSpec.vcpus),
        numa_nodes=guest_data.get("numa_nodes", GuestSpec.numa_nodes),
        machine=guest_data.get("machine", GuestSpec.machine),
        sysctl=tuple(sorted(guest_data.get("sysctl", {}).items())),
        disk_mib=guest_data.get("disk", {}).get("size_mib"),
        swap_mib=guest_data.get("disk", {}).get("swap_mib"),
        pmem_mib=guest_data.get("pmem", {}).get("size_mib"),
        sysfs=tuple((path, str(value)) for path, value in guest_data.get("sysfs", {}).items()),
        # Relative to the scenario file, like a path a user writes beside it.
        disk_image=(path.parent / guest_data["disk_image"]).resolve() if "disk_image" in guest_data else None,
    )
    probe_data = dict(data.get("probe", {}))
    steps = probe_data.pop("after_inject", "wait")
    probe = ProbeSpec(after_inject=() if steps == "wait" else (steps,) if isinstance(steps, str) else tuple(steps),
                      **probe_data)
    if guest.disk_image is not None and not guest.disk_image.is_file():
        fail(("guest", "disk_image"), f"{guest.disk_image}: no such file")
    if probe.memory == "file" and guest.disk_mib is None and guest.pmem_mib is None:
        fail(("probe", "memory"), "memory: file needs guest.disk or guest.pmem (the file lives on the "
                                  "guest's ext4 file system at /mnt)")
    if probe.memory.startswith("fuse-mlock") and guest.numa_nodes < 2:
        fail(("probe", "memory"), f"memory: {probe.memory} needs guest.numa_nodes: 2 (move_pages() moves the "
                                  f"target to node 1)")
    if guest.pmem_mib is not None and guest.disk_mib is not None:
        fail(("guest", "pmem"), "not together with guest.disk: both are mounted at /mnt")
    if guest.numa_nodes > 1 and guest.memory_mib < NUMA_NODE_MIN_MIB * guest.numa_nodes:
        fail(("guest", "numa_nodes"), f"{guest.numa_nodes} nodes need memory_mib of at least "
             f"{NUMA_NODE_MIN_MIB * guest.numa_nodes} ({NUMA_NODE_MIN_MIB} MiB each), not {guest.memory_mib}")
    if guest.numa_nodes > 1 and guest.pmem_mib is not None:
        fail(("guest", "numa_nodes"), "not together with guest.pmem: its memmap= range would cut across the nodes")
    if guest.pmem_mib is not None and guest.memory_mib < guest.pmem_mib + PMEM_MIN_RAM_MIB:
        fail(("guest", "pmem", "size_mib"), f"{guest.pmem_mib} MiB of pmem needs memory_mib of at least "
             f"{guest.pmem_mib + PMEM_MIN_RAM_MIB} (the guest keeps {PMEM_MIN_RAM_MIB} MiB of RAM), "
             f"not {guest.memory_mib}")
    if guest.swap_mib is not None and guest.swap_mib > guest.disk_mib - 8:
        fail(("guest", "disk", "swap_mib"), f"a {guest.swap_mib} MiB swap file does not fit on a "
             f"{guest.disk_mib} MiB ext4 disk (leave 8 MiB)")
    if probe.memory.startswith("swapcache") and guest.swap_mib is None:
        fail(("probe", "memory"), f"memory: {probe.memory} needs guest.disk.swap_mib (a swap file to page out to)")
    if probe.memory in ("hugetlb", "hugetlb-file", "thp", "thp-eligible", "thp-pinned") and probe.pages % 512:
        fail(("probe", "pages"), f"{probe.pages} is not a multiple of 512 (2 MiB pages of {probe.memory})")
    if probe.target >= probe.pages:
        fail(("probe", "target"), f"page {probe.target} does not exist (the probe has {probe.pages} pages)")
    if probe.cpu >= guest.vcpus:
        fail(("probe", "cpu"), f"vCPU {probe.cpu} does not exist (guest has {guest.vcpus})")

    inject = _inject_spec(data["inject"], guest, fail)
    if not 0 <= probe.target + inject.page_offset < probe.pages:
        fail(("inject", "page_offset"), f"page {probe.target + inject.page_offset} is not one of the probe's "
                                        f"{probe.pages} pages (target {probe.target})")
    _check_log_expectations(data, fail)
    expect = _expectations(data["expect"])
    variants = tuple(
        KernelVariant(v["kernel"], " ".join(v["because"].split()),
                      _expectations({**data["expect"], **v.get("expect", {})}), skip=v.get("skip", False),
                      config=tuple(v.get("config", ())))
        for v in data.get("kernel_variants", ()))
    for at, e in [(("expect",), expect)] + [(("kernel_variants", i, "expect"), v.expect) for i, v in enumerate(variants)]:
        if e.guest == "panic":
            for key in ("sigbus", "page_poisoned", "hardware_corrupted_kb", "other_pages_intact", "ras_record"):
                if getattr(e, key) is not None:
                    fail(at + (key,), "cannot be checked when the guest is expected to panic (only kernel_log, "
                                      "kernel_log_absent and memory_failure_event can)")
        if inject.region == "outside-ram" and e.page_poisoned is not None:
            fail(at + ("page_poisoned",), "cannot be checked outside guest RAM (no page there to poison)")
    known = tuple(KnownFailure(k["kernel"], " ".join(k["because"].split()), k["signature"], k["task"],
                               k["function"], tuple(k.get("explains", ())))
                  for k in data.get("known_failures", ()))
    for i, k in enumerate(known):
        for j, check in enumerate(k.explains):
            if check not in EXPLAINABLE_CHECKS:
                fail(("known_failures", i, "explains", j), f"'{check}' is not a check a crash can be said to "
                                                           f"explain (one of: {', '.join(EXPLAINABLE_CHECKS)})")
        if len(k.signature.splitlines()) != 1 or not k.signature.strip():
            fail(("known_failures", i, "signature"), "must be one line of text (it is looked for in the detail "
                                                     "of a failed check)")
        if any(other.condition == k.condition for other in known[:i]):
            fail(("known_failures", i, "kernel"), f"'{k.condition}' is already marked by an earlier entry")
    remerges = "ksm-remerge" in probe.after_inject
    if remerges and probe.memory != "ksm":
        fail(("probe", "after_inject"), "ksm-remerge needs probe.memory: ksm (its pages copy the ksm kind's content)")
    for at, e in [(("expect",), expect)] + [(("kernel_variants", i, "expect"), v.expect) for i, v in enumerate(variants)]:
        if e.ksm_remerge is not None and not remerges:
            fail(at + ("ksm_remerge",), "needs a ksm-remerge step in probe.after_inject")
    timeouts = Timeouts(**data.get("timeouts", {}))
    _check_repeats(inject, timeouts, fail)
    if probe.after_inject and probe.mode == "busy":
        fail(("probe", "after_inject"), "steps run only with probe.mode: wait (a busy probe reads its page "
                                        "until the signal and takes no steps)")
    if probe.after_inject and expect.guest == "panic":
        fail(("probe", "after_inject"), "steps never run when the guest is expected to panic")
    if inject.gate == "user-mode" and probe.mode != "busy":
        fail(("inject", "gate"), "user-mode gating needs probe.mode: busy (the gate waits for the probe's loop)")

    if inject.fields is not None:
        for at, e in [(("expect",), expect)] + [(("kernel_variants", i, "expect"), v.expect)
                                                for i, v in enumerate(variants)]:
            if not saw_the_machine_check(e):
                fail(at, "no expectation shows that the guest saw the machine check: every one could hold on a "
                         "guest that never noticed it; expect the kernel's own record too (a kernel_log line "
                         "such as 'Memory failure: ...' or 'mce: [Hardware Error]: ...', page_poisoned: true, "
                         "hardware_corrupted_kb, a sigbus code or ras_record: true)")
    return Scenario(name=name, path=path, description=data["description"].strip(), guest=guest,
                    probe=probe, inject=inject, expect=expect, timeouts=timeouts,
                    kernel_variants=variants, known_failures=known)


def _check_repeats(inject: InjectSpec, timeouts: Timeouts, fail) -> None:
    """count and interval_s against the error kind and the phase deadlines."""
    if inject.fields is None:
        return
    if inject.interval_s is not None and inject.count == 1 and inject.fields.status & mce.MCI_STATUS_UC:
        fail(("inject", "interval_s"), "only means something with count > 1 (or a corrected error's poll wait)")
    if inject.count > 1 and inject.interval_s is None and not inject.fields.status & mce.MCI_STATUS_UC:
        fail(("inject", "count"), "a corrected error prints no memory-failure line to wait for between "
                                  "injections: give interval_s")
    if inject.interval_s is not None:
        spent = inject.interval_s * (inject.count - 1)
        if spent >= timeouts.inject:
            fail(("inject", "interval_s"), f"{inject.count - 1} interval(s) of {inject.interval_s:g} s do not fit "
                                           f"in timeouts.inject ({timeouts.inject:g} s)")
        if not inject.fields.status & mce.MCI_STATUS_UC and inject.interval_s >= timeouts.observe:
            fail(("inject", "interval_s"), f"{inject.interval_s:g} s (the wait for the guest's next poll after the "
                                           f"last one) does not fit in timeouts.observe ({timeouts.observe:g} s)")


def _inject_spec(d: dict, guest: GuestSpec, fail) -> InjectSpec:
    if d.get("preset") == "none":
        for key in ("count", "interval_s", "address", "page_offset", "region", "gate", "broadcast", "race"):
            if key in d:
                fail(("inject", key), "preset: none injects nothing")
        return InjectSpec(fields=None, preset="none", cpu=0)
    if "preset" in d:
        fields = mce.PRESETS[d["preset"]]
    else:
        raw = d["raw"]
        fields = mce.MceFields(bank=raw["bank"], status=raw["status"], mcg_status=raw["mcg_status"],
                               misc=raw.get("misc", 0))
    if fields.bank >= mce.QEMU_MCE_BANKS:
        fail(("inject", "raw", "bank"), f"bank {fields.bank} does not exist (QEMU gives every vCPU "
                                         f"{mce.QEMU_MCE_BANKS} banks, 0-{mce.QEMU_MCE_BANKS - 1})")
    if not fields.status & mce.MCI_STATUS_VAL:
        fail(("inject", "raw", "status"), f"{fields.status:#x} lacks VAL (bit 63): the guest would ignore it")
    each_vcpu = d.get("cpu") == "each"
    cpu = 0 if each_vcpu else d.get("cpu", 0)
    if cpu >= guest.vcpus:
        fail(("inject", "cpu"), f"vCPU {cpu} does not exist (guest has {guest.vcpus}); QEMU would drop it silently")
    address = d.get("address")
    for key in ("region", "page_offset"):
        if address is not None and d.get(key, InjectSpec.region if key == "region" else 0) not in ("probe", 0):
            fail(("inject", key), f"contradicts inject.address (an absolute address is injected as given)")
    if address is not None:
        # Early and loose: where RAM of this size can be at all. The guest's QEMU's
        # own memory map decides before anything is injected (memory_map).
        ranges = memory_map.envelope(guest.memory_mib << 20)
        if not memory_map.contains(ranges, address):
            fail(("inject", "address"), f"{address:#x} is outside guest RAM (a {guest.memory_mib} MiB guest "
                                        f"has none outside {memory_map.describe(ranges)})")
    if d.get("page_offset", 0) and d.get("region", "probe") != "probe":
        fail(("inject", "page_offset"), f"counts pages of the probe's mapping; region {d['region']} is not the probe's")
    gate = d.get("gate", "user-mode" if mce.action_required(fields) else "none")
    race = d.get("race")
    if race is not None:
        _check_race(d, guest, fields, each_vcpu, gate, fail)
    return InjectSpec(fields=fields, preset=d.get("preset"), cpu=cpu, broadcast=d.get("broadcast", False),
                      page_offset=d.get("page_offset", 0), address=address, gate=gate, count=d.get("count", 1),
                      region=d.get("region", "probe"), interval_s=d.get("interval_s"), each_vcpu=each_vcpu,
                      race=race)


def _check_race(d: dict, guest: GuestSpec, fields: mce.MceFields, each_vcpu: bool, gate: str, fail) -> None:
    """inject.race (take-free-block, retake-thp-block) picks its own page and holds the injected vCPU while a
    guest process on another vCPU allocates; what that rules out, said in one line each."""
    for key in ("address", "page_offset", "region"):
        if key in d:
            fail(("inject", key), "contradicts inject.race (the race's guest process picks the page)")
    if guest.vcpus < 2:
        fail(("inject", "race"), f"needs guest.vcpus >= 2 (the guest has {guest.vcpus}): a process on another "
                                 f"vCPU takes the page's block while the injected vCPU is held")
    if each_vcpu or d.get("count", 1) != 1:
        fail(("inject", "race"), "forces one interleaving: one machine check on one vCPU (no cpu: each, no count)")
    if mce.action_required(fields) or gate != "none":
        fail(("inject", "race"), "needs an action-optional error (srao) without a gate: memory_failure() then "
                                 "runs from a work item on the injected vCPU, where it is held")


def _check_log_expectations(data: dict, fail) -> None:
    """Every kernel_log/kernel_log_absent entry usable (placeholders, format specs, regex), up front."""
    blocks = [(("expect",), data["expect"])] + [(("kernel_variants", i, "expect"), v["expect"])
                                                for i, v in enumerate(data.get("kernel_variants", ())) if "expect" in v]
    for at, block in blocks:
        for key in ("kernel_log", "kernel_log_absent"):
            for i, entry in enumerate(block.get(key, ())):
                try:
                    logmatch.validate(_line_expectation(entry))
                except logmatch.ExpectationError as exc:
                    fail(at + (key, i), str(exc))


def _line_expectation(entry: str | dict) -> LineExpectation:
    if isinstance(entry, dict) and "printk" in entry:
        return LineExpectation(entry["printk"], printk=True, values=tuple(entry.get("values", ())))
    return LineExpectation(entry["regex"], regex=True) if isinstance(entry, dict) else LineExpectation(entry)


def _expectations(d: dict) -> Expectations:
    sigbus = d.get("sigbus")
    if isinstance(sigbus, dict):
        sigbus = SigbusExpectation(**sigbus)
    event = d.get("memory_failure_event")
    if isinstance(event, dict):
        event = EventExpectation(**event)
    return Expectations(
        sigbus=sigbus, page_poisoned=d.get("page_poisoned"),
        hardware_corrupted_kb=d.get("hardware_corrupted_kb"),
        kernel_log=tuple(map(_line_expectation, d.get("kernel_log", ()))),
        kernel_log_absent=tuple(map(_line_expectation, d.get("kernel_log_absent", ()))),
        memory_failure_event=event, other_pages_intact=d.get("other_pages_intact"),
        guest=d.get("guest", "alive"),
        fsync=tuple(d["fsync"]) if "fsync" in d else None, reread=d.get("reread"), collapse=d.get("collapse"),
        huge_regions_after_collapse=tuple(d["huge_regions_after_collapse"]) if "huge_regions_after_collapse" in d else None,
        no_kernel_bugs=d.get("no_kernel_bugs", True),
        soft_offline=d.get("soft_offline"), soft_poison=d.get("soft_poison"), unpoison=d.get("unpoison"),
        madvise_hwpoison=d.get("madvise_hwpoison"),
        target_moved=d.get("target_moved"), ksm_remerge=d.get("ksm_remerge"), checked_page=d.get("checked_page"),
        ras_record=d.get("ras_record"),
    )


def expand(scenario: Scenario) -> list[Scenario]:
    """A scenario with inject.cpu: each becomes one per vCPU, NAME.cpuN, probe pinned there too."""
    if not scenario.inject.each_vcpu:
        return [scenario]
    return [replace(scenario, name=f"{scenario.name}.cpu{k}", inject=replace(scenario.inject, cpu=k),
                    probe=replace(scenario.probe, cpu=k)) for k in range(scenario.guest.vcpus)]


def resolve(name_or_file: str, scenarios_dir: Path, examples_dir: Path | None = None) -> Path:
    """A path to a file, or the name of a scenario in the catalog (or, failing that, of an
    example the docs write step by step: docs/examples/NAME.yaml, so the authoring guide's
    commands work before the reader has saved the file)."""
    candidate = Path(name_or_file)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_file:
        if not candidate.is_file():
            raise InputError(f"{name_or_file}: no such scenario file")
        return candidate
    path = scenarios_dir / f"{name_or_file}.yaml"
    if not path.is_file() and examples_dir is not None and (examples_dir / f"{name_or_file}.yaml").is_file():
        return examples_dir / f"{name_or_file}.yaml"
    if not path.is_file():
        raise InputError(f"unknown scenario '{name_or_file}'{_closest(name_or_file, catalog(scenarios_dir))}")
    return path


def _closest(name: str, known: list[str]) -> str:
    """'; did you mean A, B or C?' with the closest catalog names (difflib, then names that
    hold what was typed), else where the list is."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    close += [k for k in known if name and name in k and k not in close][:5 - len(close)]
    if close:
        return "; did you mean " + (", ".join(close[:-1]) + " or " if len(close) > 1 else "") + close[-1] + "?"
    return " (`mce-orchestrator list` shows the catalog)"


def catalog(scenarios_dir: Path) -> list[str]:
    return sorted(p.stem for p in scenarios_dir.glob("*.yaml"))


def key_line(path: Path, at: tuple) -> int | None:
    """The line of key `at` (e.g. ("inject", "address")) in a scenario file that loaded."""
    lines: dict[tuple, int] = {}
    _to_python(path, _compose(path, Path(path).read_text(encoding="utf-8")), lines)
    return _line_for(lines, at)
