"""Results: console account, JUnit XML, JSON report, results/latest."""
from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from orchestrator.judge.verdict import Evidence, Verdict

from orchestrator.plumbing.outcome import HarnessError, Outcome

from orchestrator.scenario import KnownFailure


# Where `make test` (and CI) follow what every orchestrator process is doing:
# one line per scenario start, phase start and verdict, appended by each
# process (and each pytest-xdist worker) to the same file, which the Makefile
# shows as it grows. A hung job's last line there names scenario and phase.
PROGRESS_LOG_ENV = "MCE_PROGRESS_LOG"


def progress(text: str) -> None:
    """Append one progress line when MCE_PROGRESS_LOG names a file; never raises."""
    path = os.environ.get(PROGRESS_LOG_ENV)
    if not path:
        return
    who = os.environ.get("PYTEST_XDIST_WORKER", "")
    line = f"{time.strftime('%H:%M:%S')} {'[' + who + '] ' if who else ''}{text}\n"
    try:
        # One write() on an O_APPEND file: lines from many processes never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode(errors="replace"))
        finally:
            os.close(fd)
    except OSError:
        pass  # progress is a courtesy; a full disk must not cost the run


@dataclass
class ScenarioResult:
    name: str
    path: str
    outcome: Outcome
    artifacts: Path
    phases: dict[str, float] = field(default_factory=dict)
    verdict: Verdict | None = None
    error: HarnessError | None = None
    evidence: Evidence | None = None
    injection: dict | None = None
    description: str = ""
    qemu_pid: int | None = None
    image: str | None = None
    kernel_release: str | None = None
    kernel_source: str | None = None            # which package (version, suite) the image's kernel is
    qemu_version: str | None = None             # `qemu-system-x86_64 --version` of the QEMU that ran it
    qemu_binary: str | None = None
    known_failure: KnownFailure | None = None   # marked for this kernel
    known_note: str | None = None               # what the mark made of the verdict
    skip_reasons: list[str] = field(default_factory=list)  # SKIP: the options the kernel lacks

    @property
    def duration(self) -> float:
        return sum(self.phases.values())

    @property
    def reasons(self) -> list[str]:
        reasons = list(self.skip_reasons) + ([str(self.error)] if self.error else [])
        if self.verdict:
            reasons += self.verdict.reasons
        if self.known_note:
            # First for KNOWN-FAIL and XPASS (that is the news); after the failed checks for a FAIL.
            reasons = reasons + [self.known_note] if self.outcome == Outcome.FAIL else [self.known_note] + reasons
        return reasons

    def to_json(self) -> dict:
        ev = self.evidence
        return {
            "name": self.name, "file": self.path, "outcome": self.outcome.label,
            "duration_s": round(self.duration, 3),
            "phases_s": {k: round(v, 3) for k, v in self.phases.items()},
            "error": {"phase": self.error.phase, "message": self.error.message} if self.error else None,
            "skip_reasons": self.skip_reasons,
            "checks": [{"name": c.name, "outcome": c.outcome.name, "detail": c.detail}
                       for c in (self.verdict.checks if self.verdict else ())],
            "injection": self.injection,
            "causes": ev.causes if ev else [],
            "probe": {"ready": ev.ready, "result": ev.probe_result, "exit_status": ev.probe_exit_status} if ev else None,
            "artifacts": str(self.artifacts),
            "qemu_pid": self.qemu_pid,
            "image": self.image,
            "kernel_release": self.kernel_release,
            "kernel_source": self.kernel_source,
            "qemu": {"version": self.qemu_version, "binary": self.qemu_binary} if self.qemu_version else None,
            "known_failure": {"kernel": self.known_failure.condition, "because": self.known_failure.because,
                              "signature": self.known_failure.signature, "task": self.known_failure.task,
                              "function": self.known_failure.function, "explains": list(self.known_failure.explains),
                              "note": self.known_note}
            if self.known_failure else None,
        }


_MARK = {Outcome.PASS: "ok  ", Outcome.FAIL: "FAIL", Outcome.ERROR: "ERR ", Outcome.SKIP: "skip"}


HEARTBEAT_S = 10.0  # a phase that printed nothing for this long says it is still at work
_COLOURS = {"PASS": "32", "KNOWN-FAIL": "33", "XPASS": "31", "FAIL": "31", "ERROR": "31;1", "SKIP": "33"}


def wants_colour(stream: TextIO) -> bool:
    """Colour on a terminal only: not when piped or written to a file, not with NO_COLOR
    (no-color.org) or TERM=dumb."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class ConsoleReporter:
    """Progress by phase with timings, then the verdict and its reasons. With total > 1
    each scenario is numbered [n/N]; heartbeat: a phase silent for HEARTBEAT_S says so."""

    def __init__(self, stream: TextIO = sys.stderr, total: int = 1, heartbeat: float | None = None):
        self.stream = stream
        self.total = total
        self.started = 0
        self.colour = wants_colour(stream)
        self._lock = threading.Lock()
        self._last_output = time.monotonic()
        self._phase: tuple[str, float] | None = None  # (phase, started at)
        if heartbeat:
            threading.Thread(target=self._heartbeat, args=(heartbeat,), name="heartbeat", daemon=True).start()

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)
            self._last_output = time.monotonic()

    def _heartbeat(self, seconds: float) -> None:
        while True:
            time.sleep(min(seconds / 4, 1.0))
            with self._lock:
                phase, quiet = self._phase, time.monotonic() - self._last_output
            if phase is not None and quiet >= seconds:
                self._print(f"   {phase[0]:<8} ... still at it, {time.monotonic() - phase[1]:.0f} s so far")

    def label(self, outcome: Outcome, width: int = 0) -> str:
        """The outcome's label, padded to width, coloured on a terminal."""
        text = f"{outcome.label:<{width}}"
        return f"\033[{_COLOURS[outcome.label]}m{text}\033[0m" if self.colour and outcome.label in _COLOURS else text

    def scenario_started(self, name: str) -> None:
        progress(f"{name}: started")
        self.started += 1
        self._print(f"== {name}" + (f"  [{self.started}/{self.total}]" if self.total > 1 else ""))

    def phase_started(self, name: str, phase: str) -> None:
        progress(f"{name}: {phase}")
        with self._lock:
            self._phase = (phase, time.monotonic())

    def phase_finished(self, name: str, phase: str, seconds: float, note: str = "") -> None:
        self._phase = None
        self._print(f"   {phase:<8} {seconds:6.2f} s  {note}".rstrip())

    def phase_failed(self, name: str, phase: str, seconds: float, error: str) -> None:
        self._phase = None
        self._print(f"   {phase:<8} {seconds:6.2f} s  ERROR: {error}")

    def note(self, text: str) -> None:
        progress(f"   {text}")
        self._print(f"   {text}")

    def scenario_finished(self, result: ScenarioResult) -> None:
        progress(f"{result.name}: {result.outcome.label} in {result.duration:.1f} s")
        self._phase = None
        self._print(f"   {self.label(result.outcome)} {result.name} in {result.duration:.1f} s")
        if result.known_note:
            self._print(f"     {result.known_note}")
        if result.verdict:
            for check in result.verdict.checks:
                self._print(f"     [{_MARK[check.outcome]}] {check.name}: {check.detail}")
        for line in result.skip_reasons:
            self._print(f"     [{_MARK[Outcome.SKIP]}] {line}")
        if result.error:
            self._print(f"     [{_MARK[Outcome.ERROR]}] {result.error}")
        for cause in result.evidence.causes if result.evidence else ():
            self._print(f"     cause: {cause}")
        self._print(f"     artifacts: {result.artifacts}")

    def run_finished(self, results: list[ScenarioResult], run_dir: Path) -> None:
        counts = {o: sum(r.outcome == o for r in results) for o in Outcome}
        self._print("")
        width = max([5] + [len(r.outcome.label) for r in results])  # KNOWN-FAIL is wider than PASS, ERROR
        for r in results:
            self._print(f"{self.label(r.outcome, width)} {r.name:<32} {r.duration:6.1f} s"
                        + (f"  {r.reasons[0]}" if r.reasons else ""))
        marked = "".join(f", {counts[o]} {what if counts[o] != 1 else one}"
                         for o, what, one in ((Outcome.KNOWN_FAIL, "known failures", "known failure"),
                                              (Outcome.XPASS, "unexpected passes", "unexpected pass"),
                                              (Outcome.SKIP, "skipped", "skipped")) if counts[o])
        self._print(f"{plural(len(results), 'scenario')}: {counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
                    f"{plural(counts[Outcome.ERROR], 'error')}{marked}; report: {run_dir}")


def new_run_dir(results_root: Path) -> Path:
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    run_dir = results_root / run_id
    run_dir.mkdir(parents=True, mode=0o755)
    return run_dir


def point_latest(results_root: Path, run_dir: Path) -> str | None:
    """results/latest -> this run, replaced atomically (a reader never sees it missing).
    Only a symlink (ours, from an earlier run) or nothing is replaced: a file or folder someone
    put there is left as it is, and the returned line says so (None when latest was set)."""
    latest = results_root / "latest"
    if latest.exists() or latest.is_symlink():
        if not latest.is_symlink():
            kind = "folder" if latest.is_dir() else "file"
            return (f"{latest} is a {kind}, not the link this tool keeps: left as it is "
                    f"(this run: {run_dir})")
    tmp = results_root / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    try:
        tmp.replace(latest)
    finally:
        tmp.unlink(missing_ok=True)  # replaced: gone already; failed: not left behind
    return None


def junit_file(path: str, repo_root: Path) -> str:
    """A scenario's file as JUnit's file attribute: relative to the checkout when inside it,
    so a catalog name and a path to the same file give the same attribute."""
    try:
        resolved = Path(path).resolve()
    except (OSError, ValueError, UnicodeError):  # a name the file system cannot hold: as given
        return path
    try:
        return str(resolved.relative_to(repo_root.resolve()))
    except ValueError:
        return str(resolved)


def write_junit(results: list[ScenarioResult], path: Path, properties: dict[str, str] | None = None,
                repo_root: Path | None = None) -> None:
    """As pytest writes it: a known failure is <skipped type="pytest.xfail">, an
    unexpected pass a <failure> "[XPASS(strict)] ..." (a strict xfail that passed).
    Each test case is named for its kernel, NAME[KERNEL-RELEASE] (as the nightly names
    them NAME[IMAGE]), with the kernel, the image and `properties` (the QEMU) as its
    properties: runs on several kernels merge without two cases of one id."""
    repo_root = repo_root or Path(__file__).resolve().parents[2]
    suite = ET.Element("testsuite", name="mce-orchestrator", tests=str(len(results)),
                       failures=str(sum(r.outcome in (Outcome.FAIL, Outcome.XPASS) for r in results)),
                       errors=str(sum(r.outcome == Outcome.ERROR for r in results)),
                       skipped=str(sum(r.outcome in (Outcome.KNOWN_FAIL, Outcome.SKIP) for r in results)),
                       time=f"{sum(r.duration for r in results):.3f}")
    for r in results:
        kernel = r.kernel_release or r.image
        case = ET.SubElement(suite, "testcase", classname="scenarios",
                             name=f"{r.name}[{kernel}]" if kernel else r.name,
                             file=junit_file(r.path, repo_root), time=f"{r.duration:.3f}")
        props = ET.SubElement(case, "properties")
        for key, value in [("kernel", r.kernel_release), ("image", r.image), ("kernel_source", r.kernel_source),
                           ("qemu_version", r.qemu_version),
                           ("qemu_binary", r.qemu_binary), *(properties or {}).items()]:
            if value:
                ET.SubElement(props, "property", name=key, value=str(value))
        if r.outcome == Outcome.FAIL:
            ET.SubElement(case, "failure", message="; ".join(r.reasons)).text = "\n".join(r.reasons)
        elif r.outcome == Outcome.XPASS:
            ET.SubElement(case, "failure", message=f"[XPASS(strict)] {r.known_note}").text = r.known_note
        elif r.outcome == Outcome.KNOWN_FAIL:
            ET.SubElement(case, "skipped", type="pytest.xfail", message=r.known_note or "").text = "\n".join(r.reasons)
        elif r.outcome == Outcome.ERROR:
            ET.SubElement(case, "error", message="; ".join(r.reasons)).text = "\n".join(r.reasons)
        elif r.outcome == Outcome.SKIP:
            ET.SubElement(case, "skipped", message="; ".join(r.reasons)).text = "\n".join(r.reasons)
        lines = [f"{phase}: {seconds:.2f} s" for phase, seconds in r.phases.items()]
        if r.verdict:
            lines += [f"[{c.outcome.name}] {c.name}: {c.detail}" for c in r.verdict.checks]
        lines.append(f"artifacts: {r.artifacts}")
        ET.SubElement(case, "system-out").text = "\n".join(lines)
    for element in suite.iter():
        # Guest output, scenario strings and file names can hold characters XML 1.0 cannot carry at all.
        element.text = xml_safe(element.text) if element.text is not None else None
        element.attrib = {key: xml_safe(value) for key, value in element.attrib.items()}
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 forbids (controls, lone surrogates, U+FFFE/F) written as \\xNN."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def _json_safe(value):
    """NaN and infinities are not JSON: written as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def summary_counts(results: list[ScenarioResult]) -> dict[str, int]:
    """How many scenarios ended each way, by label, and the total."""
    return {"total": len(results), **{o.label: sum(r.outcome == o for r in results) for o in Outcome}}


def write_json(results: list[ScenarioResult], path: Path, meta: dict) -> None:
    report = _json_safe({**meta, "summary": summary_counts(results), "scenarios": [r.to_json() for r in results]})
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
