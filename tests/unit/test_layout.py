"""The package's import graph, read from the source (ast, nothing imported): no cycle,
and plumbing/ below every stage."""
import ast
from pathlib import Path

import orchestrator

PACKAGE = Path(orchestrator.__file__).parent
ROOT = "orchestrator"


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module and package of orchestrator."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def import_nodes(tree: ast.Module, *, import_time: bool):
    """Every import statement; with import_time, only those that run when the module is
    imported (not in a function body, not under `if TYPE_CHECKING:`)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif import_time and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif import_time and isinstance(node, ast.If) and is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def known(name: str) -> str:
    """The orchestrator module a dotted name lives in (`a.b.attr` -> `a.b`)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The orchestrator modules an import statement names: `from orchestrator.x import y`
    is orchestrator.x.y when y is a module, else orchestrator.x."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            parts = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return {known(name) for name in names if name == ROOT or name.startswith(ROOT + ".")}


def packages_above(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def graph(*, import_time: bool) -> dict[str, set[str]]:
    """module -> the modules it imports. With import_time: what importing it runs, which
    includes the packages above each module it imports (their __init__ runs first),
    except the ones above itself (already running or run)."""
    edges = {}
    for module, path in MODULES.items():
        out = set()
        for node in import_nodes(ast.parse(path.read_text()), import_time=import_time):
            for target in targets(module, node):
                out.add(target)
                if import_time:
                    out |= packages_above(target) - packages_above(module) - {module}
        edges[module] = out - {module, ROOT}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_pipeline():
    # A sanity check of the reader itself: the runner imports every stage.
    edges = graph(import_time=False)
    stages = {known(t).split(".")[1] for t in edges["orchestrator.runner"]}
    assert {"scenario", "guest", "inject", "probe", "observe", "judge", "report", "plumbing"} <= stages


def test_no_import_cycle_between_modules():
    # Every import counts, the ones inside functions too.
    assert cycles(graph(import_time=False)) == []


def test_no_import_cycle_when_importing():
    # What runs at import time, package __init__s included: no module is ever used half-imported.
    assert cycles(graph(import_time=True)) == []


def test_plumbing_imports_nothing_of_the_stages():
    edges = graph(import_time=False)
    outside = {module: sorted(t for t in out if not t.startswith("orchestrator.plumbing"))
               for module, out in edges.items() if module.startswith("orchestrator.plumbing")}
    assert set(outside) >= {"orchestrator.plumbing.deadline", "orchestrator.plumbing.outcome"}
    assert {module: out for module, out in outside.items() if out} == {}
