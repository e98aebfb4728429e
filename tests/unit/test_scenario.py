from pathlib import Path

import pytest

from orchestrator.inject import mce

from orchestrator.plumbing.outcome import InputError

from orchestrator.scenario import NONE, ScenarioError, catalog, load_scenario, parse_scenario, resolve


REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"

MINIMAL = """\
description: test
inject:
  preset: srao
expect:
  sigbus: none
  kernel_log: ["mce: [Hardware Error]: Machine check events logged"]
"""


def parse(text, name="t"):
    return parse_scenario(text, Path(f"scenarios/{name}.yaml"))


@pytest.mark.parametrize("name", catalog(SCENARIOS))
def test_catalog_scenarios_load(name):
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    assert scenario.name == name and scenario.description


def test_defaults():
    s = parse(MINIMAL)
    assert s.guest.image == "debian-6.1" and s.guest.vcpus == 1 and s.guest.memory_mib == 512
    assert s.probe.pages == 4 and s.probe.target == 1
    assert s.inject.fields == mce.PRESETS["srao"] and s.inject.gate == "none"
    assert s.expect.sigbus == NONE and s.expect.guest == "alive"


def test_srar_defaults_to_user_mode_gate():
    text = MINIMAL.replace("srao", "srar") + "probe:\n  mode: busy\n"
    assert parse(text).inject.gate == "user-mode"


def test_raw_fields_and_hex_values():
    text = MINIMAL.replace("  preset: srao", "  raw: {bank: 3, status: 0xbd000000000000c0, mcg_status: 0x5, misc: 0x8c}")
    assert parse(text).inject.fields == mce.MceFields(3, 0xBD000000000000C0, 5, 0x8C)


@pytest.mark.parametrize("text, expected", [
    (MINIMAL + "bogus: 1\n", "t.yaml:7: bogus: unknown key"),
    (MINIMAL.replace("  sigbus: none", "  sigbus: {code: BUS_MCEERR_XX}"), "t.yaml:5: expect.sigbus.code: expected one of BUS_MCEERR_AR, BUS_MCEERR_AO; got 'BUS_MCEERR_XX'"),
    (MINIMAL.replace("preset: srao", "preset: nope"), "t.yaml:3: inject.preset: expected one of srao, srar, ucna, ce, none; got 'nope'"),
    (MINIMAL + "guest:\n  vcpus: zero\n", "t.yaml:8: guest.vcpus: expected an integer, got 'zero'"),
    (MINIMAL + "guest:\n  memory_mib: 64\n", "t.yaml:8: guest.memory_mib: expected a value >= 128, got 64"),
    ("inject: {preset: srao}\nexpect: {}\n", "t.yaml:1: missing key 'description'"),
    (MINIMAL.replace("  preset: srao", "  preset: srao\n  raw: {bank: 1, status: 1, mcg_status: 0}"),
     "t.yaml:2: inject: give exactly one of 'preset' or 'raw'"),
    (MINIMAL.replace("  preset: srao", "  preset: srao\n  preset: srar"), "t.yaml:4: inject.preset: duplicated key"),
    (MINIMAL + "probe: {pages: 2, target: 2}\n", "t.yaml:7: probe.target: page 2 does not exist"),
    (MINIMAL + "  guest: alive\n  guest: panic\n", "t.yaml:8: expect.guest: duplicated key"),
    (MINIMAL.replace("  preset: srao", "  preset: srao\n  cpu: 1"), "t.yaml:4: inject.cpu: vCPU 1 does not exist"),
    (MINIMAL.replace("  preset: srao", "  preset: srao\n  address: 0x40000000"),
     "t.yaml:4: inject.address: 0x40000000 is outside guest RAM (a 512 MiB guest has none outside "
     "0x0-0x1fffffff, 0x100000000-0x11fffffff)"),
    (MINIMAL.replace("  preset: srao", "  raw: {bank: 10, status: 0xbd000000000000c0, mcg_status: 5}"),
     "t.yaml:3: inject.raw.bank: bank 10 does not exist"),
    (MINIMAL.replace("  preset: srao", "  raw: {bank: 1, status: 0x3d000000000000c0, mcg_status: 5}"),
     "t.yaml:3: inject.raw.status: 0x3d000000000000c0 lacks VAL"),
    ("description: [unclosed\n", "t.yaml:2: not valid YAML"),
    ("", "t.yaml:1: empty file"),
    ("- a\n- b\n", "t.yaml:1: expected a mapping at the top level"),
    (MINIMAL + "x: !!python/object:os.system ls\n", "t.yaml:7: x: YAML tag tag:yaml.org,2002:python/object:os.system"),
    (MINIMAL.replace("description: test", "description: !custom test"), "t.yaml:1: description: YAML tag !custom is not allowed"),
    (MINIMAL + "name: other\n", "t.yaml:7: name: 'other' does not match the file name 't'"),
])
def test_errors_are_one_line_with_file_line_and_key(text, expected):
    with pytest.raises(ScenarioError) as info:
        parse(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"scenarios/{expected}"), message


def test_gate_needs_busy_probe():
    with pytest.raises(ScenarioError, match="inject.gate: user-mode gating needs probe.mode: busy"):
        parse(MINIMAL.replace("  preset: srao", "  preset: srao\n  gate: user-mode"))


@pytest.mark.parametrize("extra, why", [
    ("probe:\n  mode: busy\n  after_inject: [settle]\n", "steps run only with probe.mode: wait"),
    ("probe:\n  after_inject: [settle]\n", "steps never run when the guest is expected to panic"),
])
def test_steps_that_would_never_run_are_refused(extra, why):
    text = MINIMAL + extra
    if "panic" in why:
        text = text.replace("  sigbus: none", "  guest: panic")
    with pytest.raises(ScenarioError, match=f"probe.after_inject: {why}"):
        parse(text)


def test_resolve_names_and_files(tmp_path):
    assert resolve("srao-anon-late-kill", SCENARIOS) == SCENARIOS / "srao-anon-late-kill.yaml"
    with pytest.raises(InputError, match="unknown scenario 'nope'"):
        resolve("nope", SCENARIOS)
    with pytest.raises(InputError, match="no such scenario file"):
        resolve(str(tmp_path / "x.yaml"), SCENARIOS)


def test_huge_and_binary_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("description: " + "x" * 300_000 + "\n")
    with pytest.raises(ScenarioError, match="big.yaml: file is 300014 bytes"):
        load_scenario(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(binary)


def test_page_offset_must_stay_in_the_probe_mapping():
    with pytest.raises(ScenarioError, match="inject.page_offset: page 4 is not one of the probe's 4 pages"):
        parse(MINIMAL.replace("  preset: srao", "  preset: srao\n  page_offset: 3"))
    assert parse(MINIMAL.replace("  preset: srao", "  preset: srao\n  page_offset: -1")).inject.page_offset == -1


def test_expected_panic_refuses_checks_that_need_the_guest():
    with pytest.raises(ScenarioError, match="expect.sigbus: cannot be checked when the guest is expected to panic"):
        parse(MINIMAL + "  guest: panic\n")
    assert parse(MINIMAL.replace("  sigbus: none", "  guest: panic")).expect.guest == "panic"


def test_each_vcpu_expands_into_one_scenario_per_vcpu():
    from orchestrator.scenario import expand

    text = MINIMAL.replace("  preset: srao", "  preset: srao\n  cpu: each") + "guest: {vcpus: 3}\n"
    names = [(s.name, s.inject.cpu, s.probe.cpu) for s in expand(parse(text))]
    assert names == [("t.cpu0", 0, 0), ("t.cpu1", 1, 1), ("t.cpu2", 2, 2)]
    assert [s.name for s in expand(parse(MINIMAL))] == ["t"]


# --- inputs checked up front (issue 13): real files through `validate` --------------------------

def validate(tmp_path, text, name="t", capsys=None):
    from orchestrator.cli import main

    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err if capsys else ""


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "0", "-1", "0.0", "1e999"])
def test_timeouts_are_finite_positive_numbers(tmp_path, capsys, value):
    code, err = validate(tmp_path, MINIMAL + f"timeouts:\n  observe: {value}\n", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "timeouts.observe" in err and "t.yaml:8" in err, err


@pytest.mark.parametrize("inject, problem", [
    ("preset: ce\n  count: 3", "inject.count: a corrected error prints no memory-failure line"),
    ("preset: srao\n  count: 4\n  interval_s: 11", "inject.interval_s: 3 interval(s) of 11 s do not fit in timeouts.inject (30 s)"),
    ("preset: ce\n  count: 2\n  interval_s: 30", "do not fit in timeouts.inject"),
    ("preset: ce\n  count: 2\n  interval_s: 12\ntimeouts:\n  observe: 10", "does not fit in timeouts.observe (10 s)"),
    ("preset: srao\n  interval_s: 2", "inject.interval_s: only means something with count > 1"),
    ("preset: none\n  count: 2", "inject.count: preset: none injects nothing"),
])
def test_count_and_interval_fit_the_error_kind_and_the_deadlines(tmp_path, capsys, inject, problem):
    code, err = validate(tmp_path, f"description: t\ninject:\n  {inject}\nexpect:\n  guest: alive\n", capsys=capsys)
    assert code == 2 and problem in err and err.count("\n") == 1, err


def test_counts_that_fit_are_accepted(tmp_path):
    for inject in ("preset: ce\n  count: 3\n  interval_s: 1.2", "preset: srao\n  count: 3",
                   "preset: srao\n  count: 3\n  interval_s: 9"):
        path = tmp_path / "t.yaml"
        path.write_text(f"description: t\ninject:\n  {inject}\nexpect:\n  guest: alive\n  page_poisoned: true\n")
        assert load_scenario(path).inject.count == 3


@pytest.mark.parametrize("file_name", ["Upper-Case", "with space", "-leading-dash", "x" * 65, "a,comma", "über"])
def test_names_from_file_names_follow_the_name_pattern(tmp_path, capsys, file_name):
    code, err = validate(tmp_path, MINIMAL, name=file_name, capsys=capsys)
    assert code == 2 and "is not allowed" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("expect, problem", [
    ('kernel_log: ["Memory failure: {pfm:#x}"]', "expect.kernel_log[0]: unknown placeholder {pfm}"),
    ('kernel_log_absent: ["{0}"]', "expect.kernel_log_absent[0]: cannot be filled in"),
    ('kernel_log: ["{pfn:#q}"]', "cannot be filled in"),
    ('kernel_log: ["open { brace"]', "cannot be filled in"),
    ('kernel_log: ["bell \\a here"]', "expect.kernel_log[0]"),
    ('kernel_log: ["line\\nbreak"]', "expect.kernel_log[0]"),
    ('kernel_log: ["trailing newline\\n"]', "expect.kernel_log[0]"),
])
def test_kernel_log_patterns_are_checked_before_any_guest(tmp_path, capsys, expect, problem):
    code, err = validate(tmp_path, f"description: t\ninject:\n  preset: srao\nexpect:\n  {expect}\n", capsys=capsys)
    assert code == 2 and problem in err and err.count("\n") == 1, err


def test_literal_braces_and_known_placeholders_pass(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text('description: t\ninject:\n  preset: srao\nexpect:\n'
                    '  kernel_log: ["{pfn:#x} {gpa:#x} {va:x} {injected_pfn:#x} {{literal}}"]\n')
    assert load_scenario(path).expect.kernel_log


@pytest.mark.parametrize("inject, key", [
    ("address: 0x100000\n  region: kernel-code", "inject.region: contradicts inject.address"),
    ("address: 0x100000\n  region: free-page", "inject.region: contradicts inject.address"),
    ("address: 0x100000\n  page_offset: 1", "inject.page_offset: contradicts inject.address"),
    ("region: free-page\n  page_offset: 1", "inject.page_offset: counts pages of the probe's mapping"),
])
def test_contradictory_inject_keys_are_refused(tmp_path, capsys, inject, key):
    code, err = validate(tmp_path, f"description: t\ninject:\n  preset: srao\n  {inject}\nexpect:\n  guest: alive\n",
                         capsys=capsys)
    assert code == 2 and key in err and err.count("\n") == 1, err


@pytest.mark.parametrize("text", [
    'description: t\ninject:\n  preset: srao\nexpect:\n  guest: alive\nguest:\n  image: "debian-6.1\\n"\n',
    'description: t\ninject:\n  preset: srao\nexpect:\n  guest: alive\nguest:\n  sysctl:\n    "vm.overcommit_memory\\n": 1\n',
    'description: t\ninject:\n  preset: srao\nexpect:\n  guest: alive\n"timeouts\\n":\n  boot: 5\n',
    'description: t\nname: "t\\n"\ninject:\n  preset: srao\nexpect:\n  guest: alive\n',
    'description: t\ninject:\n  preset: srao\nexpect:\n  guest: alive\nguest:\n  sysfs:\n    /sys/kernel/mm/ksm/run: "1\\n"\n',
])
def test_trailing_newlines_in_keys_and_names_are_refused(tmp_path, capsys, text):
    code, err = validate(tmp_path, text, capsys=capsys)
    assert code == 2 and err.count("\n") == 1, err


@pytest.mark.parametrize("repeat", ["0", "-1", "1001", "100000000"])
def test_repeat_has_sane_bounds(capsys, repeat):
    from orchestrator.cli import main

    assert main(["run", "--repeat", repeat, "srao-anon-late-kill"]) == 2
    err = capsys.readouterr().err
    assert err == f"mce-orchestrator: error: --repeat {repeat}: must be 1 to 1000\n"


def test_running_out_of_host_memory_is_one_line_and_error(capsys, monkeypatch):
    from orchestrator import cli

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(cli, "load_scenario", no_memory)
    assert cli.main(["validate", "srao-anon-late-kill"]) == 2
    assert capsys.readouterr().err == "mce-orchestrator: error: the host ran out of memory\n"


def test_swap_file_needs_room_on_the_disk_and_swapcache_memory_needs_swap():
    s = parse(MINIMAL + "guest:\n  disk: {size_mib: 48, swap_mib: 16}\nprobe:\n  memory: swapcache-dirty\n")
    assert (s.guest.disk_mib, s.guest.swap_mib, s.probe.memory) == (48, 16, "swapcache-dirty")
    with pytest.raises(ScenarioError, match="swap_mib.*does not fit on a 48 MiB"):
        parse(MINIMAL + "guest:\n  disk: {size_mib: 48, swap_mib: 41}\n")
    with pytest.raises(ScenarioError, match="memory: swapcache needs guest.disk.swap_mib"):
        parse(MINIMAL + "guest:\n  disk: {size_mib: 48}\nprobe:\n  memory: swapcache\n")


def test_outside_ram_has_no_page_to_check():
    assert parse(MINIMAL.replace("  preset: srao", "  preset: srao\n  region: outside-ram")).inject.region == "outside-ram"
    with pytest.raises(ScenarioError, match="page_poisoned: cannot be checked outside guest RAM"):
        parse(MINIMAL.replace("  preset: srao", "  preset: srao\n  region: outside-ram") + "  page_poisoned: false\n")


def test_ras_record_is_a_boolean_and_needs_a_live_guest():
    assert parse(MINIMAL + "  ras_record: true\n").expect.ras_record is True
    assert parse(MINIMAL).expect.ras_record is None
    with pytest.raises(ScenarioError, match="expect.ras_record"):
        parse(MINIMAL + "  ras_record: yes please\n")
    with pytest.raises(ScenarioError, match="expect.ras_record: cannot be checked when the guest is expected to panic"):
        parse(MINIMAL.replace("  sigbus: none", "  guest: panic\n  ras_record: true"))


def test_pmem_holds_the_file_instead_of_a_disk_and_leaves_the_guest_ram():
    s = parse(MINIMAL + "guest:\n  pmem: {size_mib: 128}\nprobe:\n  memory: file\n")
    assert (s.guest.pmem_mib, s.guest.disk_mib, s.probe.memory) == (128, None, "file")
    with pytest.raises(ScenarioError, match="guest.pmem: not together with guest.disk"):
        parse(MINIMAL + "guest:\n  pmem: {size_mib: 128}\n  disk: {size_mib: 64}\n")
    with pytest.raises(ScenarioError, match="128 MiB of pmem needs memory_mib of at least 512"):
        parse(MINIMAL + "guest:\n  memory_mib: 448\n  pmem: {size_mib: 128}\n")
    with pytest.raises(ScenarioError, match="guest.pmem.size_mib"):  # whole 128 MiB sections
        parse(MINIMAL + "guest:\n  pmem: {size_mib: 100}\n")
    with pytest.raises(ScenarioError, match="memory: file needs guest.disk or guest.pmem"):
        parse(MINIMAL + "probe:\n  memory: file\n")


def test_page_poisoned_no_page_is_the_only_word_besides_true_and_false():
    assert parse(MINIMAL + "  page_poisoned: no-page\n").expect.page_poisoned == "no-page"
    with pytest.raises(ScenarioError, match="expect.page_poisoned"):
        parse(MINIMAL + "  page_poisoned: hidden\n")


def test_fuse_mlock_needs_a_second_numa_node_and_nodes_need_ram():
    s = parse(MINIMAL + "guest:\n  numa_nodes: 2\nprobe:\n  memory: fuse-mlock-dirty\n")
    assert (s.guest.numa_nodes, s.probe.memory) == (2, "fuse-mlock-dirty")
    assert parse(MINIMAL).guest.numa_nodes == 1
    with pytest.raises(ScenarioError, match=r"probe.memory: memory: fuse-mlock needs guest.numa_nodes: 2"):
        parse(MINIMAL + "probe:\n  memory: fuse-mlock\n")
    with pytest.raises(ScenarioError, match=r"guest.numa_nodes: 4 nodes need memory_mib of at least 512 "
                                            r"\(128 MiB each\), not 384"):
        parse(MINIMAL + "guest:\n  numa_nodes: 4\n  memory_mib: 384\n")
    with pytest.raises(ScenarioError, match="guest.numa_nodes: not together with guest.pmem"):
        parse(MINIMAL + "guest:\n  numa_nodes: 2\n  memory_mib: 768\n  pmem: {size_mib: 128}\n")
    with pytest.raises(ScenarioError, match="numa_nodes"):
        parse(MINIMAL + "guest:\n  numa_nodes: 5\n")


RACE = """\
description: test
guest:
  vcpus: 2
inject:
  preset: srao
  broadcast: true
  race: take-free-block
expect:
  sigbus: none
  kernel_log: ["Memory failure: {pfn:#x}: free buddy page: Recovered"]
"""


def test_race_is_read():
    assert parse(RACE).inject.race == "take-free-block"
    assert parse(RACE.replace("take-free-block", "retake-thp-block")).inject.race == "retake-thp-block"
    assert parse(MINIMAL).inject.race is None


def test_retake_race_has_the_same_rules():
    with pytest.raises(ScenarioError, match="inject.race: needs guest.vcpus >= 2"):
        parse(RACE.replace("take-free-block", "retake-thp-block").replace("  vcpus: 2\n", "  vcpus: 1\n"))


@pytest.mark.parametrize("change, message", [
    (("  vcpus: 2\n", "  vcpus: 1\n"), "inject.race: needs guest.vcpus >= 2 \\(the guest has 1\\)"),
    (("  race: take-free-block\n", "  race: take-free-block\n  region: free-page\n"),
     "inject.region: contradicts inject.race"),
    (("  race: take-free-block\n", "  race: take-free-block\n  count: 2\n"), "inject.race: forces one interleaving"),
    (("preset: srao", "preset: srar"), "inject.race: needs an action-optional error"),
    (("preset: srao\n  broadcast: true", "preset: none"), "inject.race: preset: none injects nothing"),
    (("race: take-free-block", "race: hold-on"), "inject.race"),
])
def test_race_mistakes_are_one_line(change, message):
    with pytest.raises(ScenarioError, match=message):
        parse(RACE.replace(*change))


# --- issue 22 item 3: positive evidence that the guest saw the machine check -------------

NOTHING_NOTICED = """\
description: t
inject: {preset: ce}
expect:
  sigbus: none
  page_poisoned: false
  hardware_corrupted_kb: 0
  other_pages_intact: true
  kernel_log_absent: [{regex: ".*Soft-offlining pfn.*"}]
  memory_failure_event: {action_required: false}
  guest: alive
"""


def test_expectations_that_could_all_hold_on_a_guest_that_noticed_nothing_are_refused(tmp_path, capsys):
    # The catalog's corrected-errors-one-page before it expected the poll's record: a guest
    # told to ignore corrected errors (machinecheck0/ignore_ce: 1) PASSed it.
    code, err = validate(tmp_path, NOTHING_NOTICED, capsys=capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "t.yaml:3: expect: no expectation shows that the guest saw the machine check" in err


@pytest.mark.parametrize("evidence", [
    '  kernel_log: ["mce: [Hardware Error]: TSC 0 ADDR {injected_gpa:x} MISC 8c"]\n',
    '  kernel_log: [{regex: "Memory failure: {pfn:#x}: .*"}]\n',
    '  kernel_log: ["Kernel panic - not syncing: Fatal machine check"]\n',
])
def test_the_kernels_own_record_is_evidence(evidence):
    text = NOTHING_NOTICED.replace("  memory_failure_event", evidence + "  memory_failure_event")
    assert parse(text).expect.kernel_log


@pytest.mark.parametrize("change", [("page_poisoned: false", "page_poisoned: true"),
                                    ("hardware_corrupted_kb: 0", "hardware_corrupted_kb: 4"),
                                    ("sigbus: none", "sigbus: {code: BUS_MCEERR_AO}")])
def test_what_the_kernel_did_about_it_is_evidence(change):
    parse(NOTHING_NOTICED.replace("preset: ce", "preset: srao").replace(*change))


def test_a_line_any_boot_prints_or_an_event_from_qemu_is_not_evidence():
    for evidence in ('  kernel_log: ["Run /init as init process"]\n', ""):
        with pytest.raises(ScenarioError, match="no expectation shows that the guest saw the machine check"):
            parse(NOTHING_NOTICED.replace("  memory_failure_event", evidence + "  memory_failure_event"))


def test_each_kernel_variant_needs_evidence_and_no_injection_needs_none():
    text = MINIMAL + ("kernel_variants:\n  - kernel: '>=6.12'\n    because: x\n"
                      "    expect: {sigbus: none, kernel_log: []}\n")
    with pytest.raises(ScenarioError, match=r"t.yaml:10: kernel_variants\[0\].expect: no expectation shows"):
        parse(text)
    assert parse("description: t\ninject: {preset: none}\nexpect: {guest: alive}\n").inject.fields is None
