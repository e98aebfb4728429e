"""Scenarios as pytest items (pytest's "non-python test files" pattern).

    pytest scenarios/ [-k thp] [-n 2] [--kernels debian-6.1,debian-6.12] [--cold] [--junitxml=...]
                      [--backend qemu|libvirt] [--connect URI] [--hosts FILE] [--qemu PATH|NAME]

Each YAML file (each vCPU of an `inject.cpu: each` file) becomes one item per
kernel image, named e.g. `srao-anon-late-kill[debian-6.12]`. With
pytest-xdist, `-n N` runs N guests at once in separate worker processes.
A FAIL (the kernel misbehaved) fails the item; an ERROR (the harness could
not tell) is reported as an error. On a kernel a scenario marks in
known_failures, the item gets a strict xfail mark once the run knows the
kernel: a KNOWN-FAIL is xfailed, an unexpected pass is XPASS(strict) (failed),
a failure another way fails. Artifacts go under results/pytest/<run id>/.

`--hosts FILE` (one libvirt URI per line, `#` comments) spreads the items
over several hypervisors: xdist worker gwN drives hosts[N % len(hosts)], so
`-n` as a multiple of the number of hosts loads each alike; every test case
in the JUnit file carries a `host` property naming the URI that ran it.

`--qemu PATH|NAME` runs every item on that QEMU, as `mce-orchestrator run --qemu`
does (a binary, a QEMU build tree, or a name in guest-images/qemus.yaml, fetched
once before the workers start); each test case carries a `qemu` property with
the version that ran it.
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from orchestrator.guest import BACKENDS, DEFAULT_BACKEND
from orchestrator.guest.qemu.install import QemuError, resolve_qemu
from orchestrator.plumbing.outcome import InputError, Outcome
from orchestrator.report import ConsoleReporter
from orchestrator.runner import REPO_ROOT, RunOptions, run_scenario
from orchestrator.scenario import expand, load_scenario

DEFAULT_KERNELS = "debian-6.1,debian-6.12"


def pytest_addoption(parser):
    parser.addoption("--kernels", default=DEFAULT_KERNELS,
                     help="comma-separated guest images to run every scenario on (default: %(default)s)")
    parser.addoption("--snapshot", action="store_true",
                     help="restore saved guests (the default; mce-orchestrator run --snapshot)")
    parser.addoption("--cold", action="store_true",
                     help="boot every guest instead of restoring a saved one (mce-orchestrator run --cold)")
    parser.addoption("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                     help="guest backend (mce-orchestrator run --backend; default: %(default)s)")
    parser.addoption("--connect", default=None, metavar="URI",
                     help="libvirt URI for --backend libvirt (default: qemu:///system)")
    parser.addoption("--hosts", default=None, metavar="FILE", type=Path,
                     help="libvirt URIs, one per line; xdist worker gwN uses line N modulo their number "
                          "(implies --backend libvirt)")
    parser.addoption("--qemu", default=None, metavar="PATH|NAME",
                     help="run the guests on this QEMU (mce-orchestrator run --qemu): a qemu-system-x86_64 "
                          "binary, a QEMU build tree, or a name in guest-images/qemus.yaml; default: the one on PATH")


def read_hosts(text: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def bound_host(hosts: list[str], worker: str) -> str:
    """The URI xdist worker `worker` (gw0, gw1, ...; 'main' without xdist) drives."""
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return hosts[index % len(hosts)]


def _backend_and_uri(config, worker: str) -> tuple[str, str | None]:
    hosts_file = config.getoption("--hosts")
    if hosts_file is None:
        return config.getoption("--backend"), config.getoption("--connect")
    try:
        hosts = read_hosts(hosts_file.read_text())
    except OSError as exc:
        raise pytest.UsageError(f"--hosts {hosts_file}: {exc.strerror}") from None
    if not hosts:
        raise pytest.UsageError(f"--hosts {hosts_file}: no libvirt URI in it")
    return "libvirt", bound_host(hosts, worker)


RUN_ID_ENV = "MCE_PYTEST_RUN_ID"


def run_id() -> str:
    """One id per pytest session, the same in every xdist worker (set before they start):
    results/pytest/<run id>/<kernel>/<worker>, so two sessions never share a folder."""
    return os.environ.setdefault(RUN_ID_ENV, time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")


QEMU_BINARY = pytest.StashKey[str]()


def qemu_binary(config) -> str:
    """--qemu resolved to the binary (a named QEMU fetched on first use), once per process."""
    if QEMU_BINARY not in config.stash:
        try:
            config.stash[QEMU_BINARY] = resolve_qemu(config.getoption("--qemu"), REPO_ROOT / "guest-images" / ".cache")
        except QemuError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[QEMU_BINARY]


def pytest_configure(config):
    run_id()  # in the controller, before xdist starts the workers (they inherit it)
    qemu_binary(config)  # a named QEMU fetched in the controller: the workers find it in the cache


def pytest_collect_file(parent, file_path: Path):
    if file_path.suffix == ".yaml" and file_path.parent.name == "scenarios":
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class HarnessTrouble(Exception):
    """ERROR: nothing is known about the kernel."""


class KernelMisbehaved(Exception):
    """FAIL: the kernel did not do what the scenario expects."""


class KnownKernelFailure(Exception):
    """KNOWN-FAIL: the kernel failed the way the scenario's known_failures mark says."""


_NOTHING_NEWER: dict[str, str | None] = {}


def _nothing_newer(kernel: str) -> str | None:
    """Why image `kernel` has no kernel today (images.yaml newer_than), once per session; None if it has."""
    if kernel not in _NOTHING_NEWER:
        from orchestrator.guest.images import ImageError, suites
        from orchestrator.guest.images.definitions import load_image_definitions
        _NOTHING_NEWER[kernel] = None
        try:
            definitions = load_image_definitions(REPO_ROOT / "guest-images" / "images.yaml")
            if definitions.get(kernel, {}).get("newer_than"):
                suites.resolve(kernel, definitions, REPO_ROOT / "guest-images" / ".cache")
        except suites.NoNewerKernel as exc:
            _NOTHING_NEWER[kernel] = str(exc)
        except ImageError:
            pass  # the run's image phase says what is wrong, as an ERROR
    return _NOTHING_NEWER[kernel]


class ScenarioFile(pytest.File):
    def collect(self):
        kernels = [k for k in self.config.getoption("--kernels").split(",") if k]
        try:
            scenarios = expand(load_scenario(self.path))
        except InputError as exc:
            raise self.CollectError(str(exc)) from None  # one line, no traceback
        for scenario in scenarios:
            for kernel in kernels:
                yield ScenarioItem.from_parent(self, name=f"{scenario.name}[{kernel}]", scenario=scenario,
                                               kernel=kernel)


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario, kernel, **kwargs):
        super().__init__(**kwargs)
        self.scenario = scenario
        self.kernel = kernel

    def runtest(self):
        none_newer = _nothing_newer(self.kernel)
        if none_newer:
            pytest.skip(none_newer)  # a release-candidate image with nothing newer today: no kernel to test
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        run_dir = REPO_ROOT / "results" / "pytest" / run_id() / self.kernel / worker
        run_dir.mkdir(parents=True, exist_ok=True)
        console = io.StringIO()
        backend, uri = _backend_and_uri(self.config, worker)
        options = RunOptions(image=self.kernel, snapshot=not self.config.getoption("--cold"),
                             backend=backend, connect=uri, qemu_binary=qemu_binary(self.config),
                             qemu=self.config.getoption("--qemu"))
        self.user_properties.append(("host", (uri or "qemu:///system") if backend == "libvirt" else "local qemu"))
        result = run_scenario(self.scenario, run_dir, options, ConsoleReporter(console))
        self.user_properties.append(("artifacts", str(result.artifacts)))
        self.user_properties.append(("outcome", result.outcome.label))
        self.user_properties.append(("kernel", result.kernel_release or ""))
        self.user_properties.append(("kernel_source", result.kernel_source or ""))  # "the newest": which it got
        self.user_properties.append(("qemu", result.qemu_version or ""))
        # Each check's line, as the console shows it: the JUnit says why without the artifacts.
        for check in result.verdict.checks if result.verdict else ():
            self.user_properties.append((f"check {check.name}", f"[{check.outcome.label}] {check.detail}"))
        if result.known_failure is not None:
            # Known only now (the image gives the kernel release); pytest's skipping
            # plugin reads marks added during the call. Strict: a pass is XPASS(strict).
            known = result.known_failure
            self.add_marker(pytest.mark.xfail(reason=f"known to fail on kernel {known.condition} "
                                                     f"('{known.signature}'): {known.because}",
                                              raises=KnownKernelFailure, strict=True))
        if result.outcome == Outcome.KNOWN_FAIL:
            raise KnownKernelFailure("\n".join(result.reasons) + f"\nartifacts: {result.artifacts}")
        if result.outcome == Outcome.SKIP:
            pytest.skip("; ".join(result.skip_reasons))
        if result.outcome == Outcome.FAIL:
            raise KernelMisbehaved("\n".join(result.reasons) + f"\nartifacts: {result.artifacts}")
        if result.outcome == Outcome.ERROR:
            raise HarnessTrouble("\n".join(result.reasons) + f"\nartifacts: {result.artifacts}")
        # XPASS returns like a PASS: the strict xfail mark makes pytest report it as XPASS(strict).

    def repr_failure(self, excinfo):
        kind = "FAIL" if excinfo.errisinstance(KernelMisbehaved) else "ERROR"
        if excinfo.errisinstance((KernelMisbehaved, HarnessTrouble)):
            return f"{kind} {self.name}:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"scenario {self.name}"
