"""The docs cannot rot quietly: the site builds with no warning (broken links and anchors, pages
left out of the nav), the generated scenario reference is what the schema gives today, the README
stays short and links every page, and the generated tables name the catalog as it is."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.scenario import expand, load_scenario

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def between(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"docs/verdicts.md: one {start} ... {end} pair"
    return text.split(start, 1)[1].split(end, 1)[0]


def table_rows(block: str) -> list[list[str]]:
    """The cells of a Markdown table's rows, header and separator left out."""
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip().strip("|").split(" | ")] for row in rows[2:]]


def catalog_names() -> set[str]:
    """What a catalog run names each scenario (NAME, or NAME.cpuN for inject.cpu: each)."""
    return {s.name for path in sorted((REPO / "scenarios").glob("*.yaml")) for s in expand(load_scenario(path))}


def makefile_kernels() -> list[str]:
    match = re.search(r"^KERNELS := (.+)$", (REPO / "Makefile").read_text(), re.M)
    return match.group(1).split()


def sometimes_kernels() -> set[str]:
    """Kernels of `make suite` that exist only while their suite has something newer (images.yaml
    newer_than: the release candidate): the run that made the table may have had none to test."""
    images = yaml.safe_load((REPO / "guest-images" / "images.yaml").read_text())
    return {k for k in makefile_kernels() if (images.get(k) or {}).get("newer_than")}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as `make docs` builds it, with --strict: any warning aborts the build."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                           "--site-dir", str(out)], capture_output=True, text=True, cwd=REPO)
    return done, out


def test_the_site_builds_in_strict_mode_without_a_warning(site):
    done, _ = site
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "WARNING" not in log and "Aborted" not in log, log


def test_link_checking_stays_on():
    """Strict mode only fails on warnings: broken anchors and pages left out of the nav are warnings
    only while mkdocs.yml says so."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    validation = config["validation"]
    for key in ("omitted_files", "not_found", "anchors", "unrecognized_links", "absolute_links"):
        assert validation[key] == "warn", key
    nav_pages = {next(iter(item.values())) for item in config["nav"]}
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == nav_pages, "every page in docs/ is in the nav, and the nav names no missing page"


def test_the_committed_scenario_reference_is_what_the_schema_gives():
    gen = generator()
    schema = json.loads(gen.schema_path().read_text())
    page = gen.render(schema)
    assert page == gen.render(json.loads(gen.schema_path().read_text())), "render() is deterministic"
    assert (DOCS / "scenario-reference.md").read_text() == page, \
        "docs/scenario-reference.md is stale: run `make docs` and commit it"


def schema_keys(node: dict, path: str = "") -> list[str]:
    """Every key a scenario may hold, as the reference names it (guest.disk.size_mib, kernel_variants[].kernel)."""
    keys = []
    for option in node.get("oneOf", []) + node.get("anyOf", []):
        keys += schema_keys(option, path)
    for key, sub in node.get("properties", {}).items():
        full = f"{path}.{key}" if path else key
        keys += [full] + schema_keys(sub, full)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        keys += schema_keys(items, f"{path}[]")
    return keys


def test_the_reference_has_an_entry_for_every_key_of_the_schema():
    gen = generator()
    schema = json.loads(gen.schema_path().read_text())
    headings = set(re.findall(r"^#+ `([^`]+)`$", gen.render(schema), re.M))
    keys = schema_keys(schema)
    assert len(keys) > 80
    assert [k for k in keys if k not in headings] == []
    assert [k for k in schema["$defs"] if k not in headings] == []


def test_the_readme_is_short_and_links_every_docs_page(site):
    _, built = site
    text = README.read_text()
    assert len(text.splitlines()) <= 210
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    linked = {link.split("#", 1)[0] for link in links}
    pages = {f"docs/{p.relative_to(DOCS).as_posix()}" for p in DOCS.rglob("*.md")}
    assert sorted(pages - linked) == [], "README links every docs page"
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        assert (REPO / target).exists(), f"README links a missing file: {link}"
        if anchor and target.startswith("docs/") and target.endswith(".md"):
            page = target.removeprefix("docs/").removesuffix(".md")
            html = (built / ("" if page == "index" else page) / "index.html").read_text()
            assert f'id="{anchor}"' in html, f"README links a missing anchor: {link}"


def test_the_readme_and_the_running_page_state_the_same_exit_codes():
    """The exit-code contract is written twice (the README is not part of the site): word for word."""
    def paragraph(text):
        start = text.index("Exit status: 0 PASS")
        return text[start:text.index("\n\n", start)]
    assert paragraph(README.read_text()) == paragraph((DOCS / "running.md").read_text())


def test_the_verdict_table_names_exactly_the_catalog():
    block = between((DOCS / "verdicts.md").read_text(), "verdict-table")
    rows = table_rows(block)
    names = [row[0] for row in rows]
    assert len(names) == len(set(names)), "a scenario listed twice"
    catalog = catalog_names()
    assert sorted(catalog - set(names)) == [], "scenarios missing from the table: run `make suite`"
    assert sorted(set(names) - catalog) == [], "rows for scenarios no longer in scenarios/"
    kernels = makefile_kernels()
    # The header: one column per kernel (`make suite`), or per (kernel, QEMU) pair, headed
    # `KERNEL, QEMU VERSION` (`make matrix`): every kernel of the Makefile on every QEMU named.
    heads = [cell.strip() for cell in next(l for l in block.splitlines() if l.startswith("|")).strip().strip("|").split(" | ")][1:]
    pairs = [tuple(head.split(", QEMU ", 1)) if ", QEMU " in head else (head, None) for head in heads]
    releases = list(dict.fromkeys(k for k, _ in pairs))
    qemus = list(dict.fromkeys(q for _, q in pairs))
    assert len(kernels) - len(sometimes_kernels()) <= len(releases) <= len(kernels), \
        f"one kernel release per kernel of `make suite` (a release candidate only when there was one): {releases}"
    assert all(re.fullmatch(r"\d+\.\d+\S*", k) for k in releases), f"the columns name kernel releases: {heads}"
    assert sorted(pairs, key=str) == sorted({(k, q) for k in releases for q in qemus}, key=str), \
        f"every kernel on every QEMU, each once: {heads}"
    assert None not in qemus or len(qemus) == 1, f"QEMU named on some columns only: {heads}"
    for row in rows:
        assert len(row) == 1 + len(heads), f"one cell per column: {row}"
        assert "not run" not in row, f"{row[0]} did not run on every kernel (and QEMU)"


def test_the_coverage_table_names_only_catalog_scenarios():
    block = between((DOCS / "verdicts.md").read_text(), "coverage-table")
    rows = table_rows(block)
    catalog = catalog_names()
    named = set()
    for row in rows:
        assert len(makefile_kernels()) - len(sometimes_kernels()) + 1 <= len(row) <= 1 + len(makefile_kernels()), row
        for cell in row[1:]:
            entries = [re.sub(r" \([^)]*\)$", "", entry) for entry in cell.split(", ")]
            if all(NAME.fullmatch(entry) for entry in entries):  # a list of scenarios, not prose
                named |= set(entries)
    assert len(named) >= 20, f"the coverage cells were not read as scenario lists: {sorted(named)}"
    assert sorted(named - catalog) == [], "the coverage table names scenarios no longer in scenarios/"
