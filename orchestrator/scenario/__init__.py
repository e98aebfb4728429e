"""Stage 1: a scenario file becomes a validated Scenario.

model.py loads and checks a YAML scenario against scenario.schema.json (every
key, its meaning) and the rules the schema cannot say; kconfig.py names the
kernel options a scenario needs. What model.py exports is re-exported here, so
`from orchestrator.scenario import load_scenario` reads as it always did.
"""
from orchestrator.scenario.model import (
    MAX_DEPTH,
    MAX_SCENARIO_BYTES,
    NONE,
    NUMA_NODE_MIN_MIB,
    SCHEMA_PATH,
    EventExpectation,
    Expectations,
    GuestSpec,
    InjectSpec,
    KernelVariant,
    KnownFailure,
    ProbeSpec,
    Scenario,
    ScenarioError,
    SigbusExpectation,
    Timeouts,
    catalog,
    expand,
    kernel_matches,
    kernel_version,
    key_line,
    load_scenario,
    parse_scenario,
    resolve,
)
