"""The layers of opsweb, read from the source: no module-level import cycle among opsweb's and
orchestration's modules, orchestration knows nothing of opsweb, and callers outside
``opsweb/services/`` use the ``opsweb.services`` entry point rather than its submodules.

Only module-level imports (including those under ``if``/``try`` at module level) count: an
import inside a function body runs late and cannot make a partially initialised module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("opsweb", "orchestration")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            found[module_name(path)] = path
    return found


def _module_level(tree: ast.Module):
    """Import statements that run when the module is imported (not inside defs or classes)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []) or [])
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules ``name`` imports at module level (``from p import m`` counts m if it is a
    module, else p)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out = set()
    for node in _module_level(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = []
            for alias in node.names:
                full = f"{prefix}.{alias.name}"
                targets.append(full if full in known else prefix)
        for target in targets:
            # ``import a.b.c`` imports a, a.b and a.b.c; the deepest known one is the edge.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
                # Importing a.b.c first runs a and a.b; a package this module lives in is
                # already being imported, so only the others are edges.
                parent = target.rpartition(".")[0]
                while parent:
                    if parent in known and not name.startswith(parent + "."):
                        out.add(parent)
                    parent = parent.rpartition(".")[0]
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_opsweb_modules():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_cycle_finder_names_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_importing_a_submodule_runs_its_package_first(tmp_path):
    # ``from opsweb.services.base import x`` from outside runs opsweb/services/__init__.py too:
    # that edge is what made policy and services import each other.
    known = set(modules())
    path = tmp_path / "example.py"
    path.write_text("from opsweb.services.base import audit\n")
    assert imported("opsweb.example", path, known) >= {"opsweb.services", "opsweb.services.base"}
    inside = imported("opsweb.services.example", path, known)
    assert "opsweb.services" not in inside


def test_orchestration_imports_nothing_from_opsweb():
    edges = graph()
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in edges.items()
        if name.split(".")[0] == "orchestration"
        for target in targets
        if target.split(".")[0] == "opsweb"
    )
    assert not offenders, offenders


def _all_imports(path: Path) -> set[str]:
    """Every module named in an import anywhere in ``path``, function bodies included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_callers_use_the_services_entry_point():
    """The admin, commands, tasks, board, reading and CLI call ``opsweb.services`` (and
    ``opsweb.policy``, ``opsweb.reads``), never a submodule of services."""
    callers = [
        path
        for name, path in modules().items()
        if name.startswith(("opsweb.admin", "opsweb.management"))
        or name in {"opsweb.board", "opsweb.reading", "opsweb.tasks", "opsweb.cli"}
    ]
    assert callers
    known = set(modules())
    offenders = sorted(
        f"{path.relative_to(ROOT)} imports {target}"
        for path in callers
        for target in _all_imports(path)
        if target.startswith("opsweb.services.") and target in known
    )
    assert not offenders, offenders


def test_policy_and_reads_do_not_import_services():
    edges = graph()
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in edges.items()
        if name == "opsweb.policy" or name.startswith("opsweb.reads") or name == "opsweb.errors"
        for target in targets
        if target == "opsweb.services" or target.startswith("opsweb.services.")
    )
    assert not offenders, offenders


def test_reads_decide_nothing():
    edges = graph()
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in edges.items()
        if name.startswith("opsweb.reads")
        for target in targets
        if target == "opsweb.policy"
    )
    assert not offenders, offenders


def test_no_services_module_is_over_800_lines():
    long = sorted(
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in (ROOT / "opsweb" / "services").glob("*.py")
        if (n := len(path.read_text().splitlines())) > 800
    )
    assert not long, long
