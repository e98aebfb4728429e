"""The authoring guide's worked example is a valid scenario, the same as the file beside it."""
from pathlib import Path

from orchestrator.scenario import load_scenario

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_worked_example_is_the_example_file_and_validates():
    guide = (DOCS / "authoring-scenarios.md").read_text()
    block = guide.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = DOCS / "examples" / "srar-mlock-page.yaml"
    body = lambda text: [l for l in text.splitlines() if not l.startswith("# yaml-language-server")]
    assert body(block) == body(example.read_text())
    scenario = load_scenario(example)
    assert scenario.name == "srar-mlock-page" and scenario.inject.gate == "user-mode"
