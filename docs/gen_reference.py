"""The scenario reference, docs/scenario-reference.md, generated from the scenario JSON Schema.

    python docs/gen_reference.py             # rewrite docs/scenario-reference.md
    python docs/gen_reference.py --check     # exit 1 if the committed page is not what the schema gives

render(schema) is a pure function: the same schema gives the same page, byte for byte. The schema
is the file beside the scenario loader, found through the module `orchestrator.scenario` (a module
today, a package after the layout move: the schema sits beside either), so the page names no path
that a move would change. `make docs` runs this, then builds the site; tests/unit/test_docs_site.py
checks that the committed page equals render(schema).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "scenario-reference.md"
SCHEMA_NAME = "scenario.schema.json"


def schema_path() -> Path:
    """The schema beside `orchestrator.scenario` (orchestrator/scenario.py or orchestrator/scenario/)."""
    candidates = []
    try:
        spec = importlib.util.find_spec("orchestrator.scenario")
    except ImportError:
        spec = None
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / SCHEMA_NAME)
    candidates += [REPO / "orchestrator" / "scenario" / SCHEMA_NAME, REPO / "orchestrator" / SCHEMA_NAME]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {SCHEMA_NAME} in any of: " + ", ".join(str(p) for p in candidates))


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (MkDocs' default) gives a heading's text."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def text(value: str) -> str:
    """Schema prose as Markdown text: no emphasis, links or HTML by accident; `code` stays code."""
    value = re.sub(r"[\x00-\x1f\x7f]", " ", value)
    value = re.sub(r"([\\*_\[\]])", r"\\\1", value)
    return value.replace("<", "&lt;")


def literal(value) -> str:
    """A YAML value as inline code."""
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif value is None:
        shown = "null"
    elif isinstance(value, int) and abs(value) > 0xFFFFFFFF:
        shown = hex(value)
    elif isinstance(value, (int, float, str)):
        shown = str(value)
    else:
        shown = json.dumps(value, sort_keys=True)
    shown = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", shown)
    fence = "``" if "`" in shown else "`"
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def ref_target(ref: str) -> tuple[str, str]:
    """(label, heading) for a local $ref: #/$defs/NAME or #/properties/KEY."""
    match = re.fullmatch(r"#/\$defs/([\w-]+)", ref)
    if match:
        return match.group(1), match.group(1)
    match = re.fullmatch(r"#/properties/([\w-]+)", ref)
    if match:
        return f"the {match.group(1)} mapping", match.group(1)
    raise ValueError(f"unsupported $ref {ref!r}")


def bounds(node: dict) -> str:
    parts = []
    low, high = node.get("minimum"), node.get("maximum")
    if "exclusiveMinimum" in node:
        parts.append(f"above {literal(node['exclusiveMinimum'])}")
    if "exclusiveMaximum" in node:
        parts.append(f"below {literal(node['exclusiveMaximum'])}")
    if low is not None and high is not None:
        parts.append(f"from {literal(low)} to {literal(high)}")
    elif low is not None:
        parts.append(f"at least {literal(low)}")
    elif high is not None:
        parts.append(f"at most {literal(high)}")
    if "multipleOf" in node:
        parts.append(f"a multiple of {literal(node['multipleOf'])}")
    return ", ".join(parts)


def kind(node: dict) -> str:
    """One line saying what values a schema node accepts."""
    if "$ref" in node:
        label, heading = ref_target(node["$ref"])
        return f"[{label}](#{slug(heading)})"
    if "const" in node:
        return literal(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(literal(v) for v in node["enum"])
    for combiner in ("oneOf", "anyOf"):
        if combiner in node and "type" not in node:
            return " **or** ".join(kind(option) for option in node[combiner])
    kind_of = node.get("type")
    if kind_of in ("integer", "number"):
        limits = bounds(node)
        return kind_of + (f", {limits}" if limits else "")
    if kind_of == "string":
        parts = ["string"]
        if "pattern" in node:
            parts.append(f"matching {literal(node['pattern'])}")
        if "minLength" in node and "maxLength" in node:
            parts.append(f"{node['minLength']} to {node['maxLength']} characters")
        elif "minLength" in node:
            parts.append(f"at least {node['minLength']} character" + ("s" if node["minLength"] != 1 else ""))
        elif "maxLength" in node:
            parts.append(f"at most {node['maxLength']} characters")
        return ", ".join(parts)
    if kind_of == "boolean":
        return "boolean"
    if kind_of == "array":
        items = kind(node["items"]) if "items" in node else "anything"
        if "items" in node and node["items"].get("type") == "object" and "properties" in node["items"]:
            items = "mappings (keys below)"
        count = ""
        if "minItems" in node and "maxItems" in node:
            count = f" ({node['minItems']} to {node['maxItems']} items)"
        elif "minItems" in node:
            count = f" (at least {node['minItems']} item" + ("s" if node["minItems"] != 1 else "") + ")"
        elif "maxItems" in node:
            count = f" (at most {node['maxItems']} items)"
        return f"list{count} of {items}"
    if kind_of == "object":
        if "properties" in node:
            return "mapping (keys below)"
        values = node.get("additionalProperties")
        names = node.get("propertyNames", {}).get("pattern")
        if isinstance(values, dict):
            keys = f"keys matching {literal(names)}" if names else "any keys"
            return f"mapping, {keys}, each to {kind(values)}"
        return "mapping"
    if isinstance(kind_of, list):
        return " or ".join(kind_of)
    return "anything"


def notes(node: dict) -> list[str]:
    """What an object node says about its keys beyond each key's own entry."""
    lines = []
    choices = node.get("oneOf") if "type" in node else None
    if choices and all(set(c) == {"required"} and len(c["required"]) == 1 for c in choices):
        names = [literal(c["required"][0]) for c in choices]
        lines.append("Exactly one of " + " or ".join(names) + ".")
    return lines


def entry(path: str, node: dict, required: bool, level: int) -> list[str]:
    """A heading for one key, what it accepts, and the entries of the keys inside it."""
    out = [f"{'#' * level} `{path}`", ""]
    facts = [f"**Type:** {kind(node)}"]
    if required:
        facts.append("**required**")
    if "default" in node:
        facts.append(f"**default:** {literal(node['default'])}")
    out += ["; ".join(facts) + ".", ""]
    if "description" in node:
        out += [text(node["description"]), ""]
    for line in notes(node):
        out += [line, ""]
    out += children(path, node, level)
    return out


def children(path: str, node: dict, level: int) -> list[str]:
    """Entries for the keys of a mapping, of a list's mappings, and of a mapping among oneOf's options."""
    out = []
    inner = max(level + 1, 3)
    if "type" not in node:
        for combiner in ("oneOf", "anyOf"):
            for option in node.get(combiner, []):
                out += children(path, option, level)
    if node.get("type") == "object" and "properties" in node:
        needed = set(node.get("required", []))
        for key, sub in node["properties"].items():
            out += entry(f"{path}.{key}", sub, key in needed, inner)
    items = node.get("items")
    if node.get("type") == "array" and isinstance(items, dict) and "properties" in items:
        needed = set(items.get("required", []))
        for key, sub in items["properties"].items():
            out += entry(f"{path}[].{key}", sub, key in needed, inner)
    return out


def render(schema: dict) -> str:
    """The whole reference page for a scenario JSON Schema."""
    out = [
        "# Scenario reference",
        "",
        "<!-- Generated by docs/gen_reference.py from the scenario JSON Schema (scenario.schema.json, beside",
        "     the scenario loader). Do not edit: change the schema and run `make docs`. -->",
        "",
        "Every key a scenario file may hold, generated from the scenario JSON Schema (`scenario.schema.json`,",
        "beside the scenario loader; point your editor's YAML plugin at it). The [authoring",
        "guide](authoring-scenarios.md) shows how the keys work together.",
        "",
    ]
    if "title" in schema:
        out += [f"**{text(schema['title'])}.** " + text(schema.get("description", "")), ""]
    if schema.get("additionalProperties") is False:
        out += ["Unknown keys are errors, at every level where a mapping lists its keys.", ""]
    needed = set(schema.get("required", []))
    out += ["| key | required |", "|---|---|"]
    for key in schema.get("properties", {}):
        out.append(f"| [`{key}`](#{slug(key)}) | {'yes' if key in needed else 'no'} |")
    out.append("")
    for key, node in schema.get("properties", {}).items():
        out += entry(key, node, key in needed, 2)
    defs = schema.get("$defs", {})
    if defs:
        out += ["## Shared types", "", "Types the keys above refer to.", ""]
        for name, node in defs.items():
            out += entry(name, node, False, 3)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed page; write nothing")
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    page = render(json.loads(schema_path().read_text()))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != page:
            print(f"{args.output} is stale: run `make docs` (or python docs/gen_reference.py)", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
