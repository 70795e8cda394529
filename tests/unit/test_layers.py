"""Layers in order: only the orchestrator needs Parsl, and no module imports itself back.

Three checks on the source of ``otfparsl/``:

- only ``otfparsl/workflow/`` imports parsl, and with parsl blocked every other module imports
  (so loading a fine-tuned ensemble, drawing a report or auditing a run never needs Parsl);
- what ``EnsembleCalculator.from_run``, ``write_report`` and ``audit_run`` import when they run
  (their lazy imports included) never reaches a module that needs Parsl;
- the graph of ``otfparsl.*`` imports has no cycle.

The import graph is read from the ``ast`` of every module: module-level imports and imports
inside functions (and under ``if TYPE_CHECKING:``) alike, since a lazy import that closes a
loop is still a loop in the layering. An edge goes to the module an import statement names:
``from otfparsl.run import lock`` names ``otfparsl.run.lock``, ``from otfparsl.models import
load_adapter`` names the package ``otfparsl.models`` (its ``__init__``). The parent packages
Python initialises on the way are not edges, so a package ``__init__`` importing its own
submodules is no cycle unless a submodule imports the package back by name. Imports by string
(``importlib.import_module``, e.g. ``otfparsl.__getattr__`` and ``models.load_adapter``) are
not seen.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "otfparsl"

#: The modules that import parsl (everything else must import with parsl blocked).
NEEDS_PARSL = frozenset({"otfparsl.workflow.site", "otfparsl.workflow.slurm"})

#: The modules that may import a module of NEEDS_PARSL (lazily, to open a site).
OPENS_A_SITE = frozenset({"otfparsl.cli"})

#: Functions that load a finished run without the orchestrator: (module, attribute path).
PARSL_FREE_ENTRY_POINTS = (
    ("otfparsl.calculators.ensemble", "EnsembleCalculator.from_run"),
    ("otfparsl.analysis.report", "write_report"),
    ("otfparsl.audit", "audit_run"),
)

_BLOCKED_IMPORT = """
import importlib, json, sys, traceback

attempts = []

class BlockParsl:
    def find_spec(self, name, path=None, target=None):
        if name == "parsl" or name.startswith("parsl."):
            importer = sys._getframe(1)
            while importer and importer.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                importer = importer.f_back
            attempts.append([name, importer.f_globals.get("__name__") if importer else None])
            raise ImportError(f"parsl is blocked in this test (imported as {name!r})")
        return None

sys.meta_path.insert(0, BlockParsl())
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
for module, attribute in json.loads(sys.argv[2]):
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    assert callable(obj), attribute
print(json.dumps({"failed": failed, "attempts": attempts,
                  "parsl_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "parsl")}))
"""


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported_names(module: str, path: Path) -> Iterable[tuple[str, list[str]]]:
    """(module named, names taken from it) for every import statement anywhere in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if _is_package(path) else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base, [alias.name for alias in node.names]


def _import_graph(parents: bool = False) -> dict[str, set[str]]:
    """``otfparsl`` module -> the ``otfparsl`` modules its import statements name.

    With ``parents``, also the packages Python initialises first: those of each imported module
    and the module's own (what importing really runs; for reachability, not for cycles).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for base, names in _imported_names(name, path):
            if base.split(".")[0] != "otfparsl":
                continue
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if len(targets) < len(names) or not names:  # plain names come from ``base`` itself
                while base not in modules:  # ``import otfparsl.x.y`` of a non-module: its package
                    base = base.rpartition(".")[0]
                targets.append(base)
            graph[name].update(t for t in targets if t != name)
    if parents:
        for name, targets in graph.items():
            for target in [*targets, name]:
                parts = target.split(".")
                graph[name].update(".".join(parts[:i]) for i in range(1, len(parts)))
            graph[name].discard(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through every strongly connected component larger than one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, inside the component, back to the start
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError(f"no cycle found in component {sorted(component)}")


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def _imports_parsl(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        if any(n == "parsl" or n.startswith("parsl.") for n in names):
            return True
    return False


def test_the_import_graph_has_no_cycle():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles in otfparsl:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_lazy_imports_and_parent_packages_only_when_asked(tmp_path, monkeypatch):
    package = tmp_path / "otfparsl"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from otfparsl.sub.a import f\n")
    (package / "sub" / "a.py").write_text("def f():\n    from otfparsl.b import g\n")
    (package / "b.py").write_text("from otfparsl.sub import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert _cycles(_import_graph()) == [["otfparsl.b", "otfparsl.sub.a", "otfparsl.b"]]
    assert "otfparsl.sub" not in _import_graph()["otfparsl.b"]
    assert "otfparsl.sub" in _import_graph(parents=True)["otfparsl.b"]


def test_only_the_workflow_package_imports_parsl():
    importers = {name for name, path in _modules().items() if _imports_parsl(path)}
    outside = sorted(n for n in importers if not n.startswith("otfparsl.workflow."))
    assert not outside, f"only otfparsl/workflow/ may import parsl; also: {outside}"
    assert importers == NEEDS_PARSL, f"modules importing parsl: {sorted(importers)}; update NEEDS_PARSL"


def test_only_the_command_line_reaches_a_module_that_needs_parsl():
    graph = _import_graph(parents=True)
    reaching = {n for n in set(graph) - NEEDS_PARSL if _reachable(graph, n) & NEEDS_PARSL}
    assert reaching == OPENS_A_SITE, f"modules that import (maybe lazily) a parsl module: {sorted(reaching)}"
    for module, _ in PARSL_FREE_ENTRY_POINTS:
        assert not _reachable(graph, module) & (NEEDS_PARSL | OPENS_A_SITE), module


def test_every_module_but_the_site_ones_imports_with_parsl_blocked():
    names = sorted(set(_modules()) - NEEDS_PARSL)
    entry = [list(e) for e in PARSL_FREE_ENTRY_POINTS]
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT, json.dumps(names), json.dumps(entry)],
        capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["failed"], "\n".join(f"{n}:\n{tb}" for n, tb in result["failed"].items())
    assert not result["attempts"], f"parsl imported (and the error caught) by: {result['attempts']}"
    assert result["parsl_loaded"] == []
    assert len(names) > 40  # every module was tried, not an empty list
