"""The code's layers: no import circles, and no import from a lower layer to a higher one.

Every import in bakery/, flows/, tasks/ and storage/ counts: at module level, inside a function, under
`if TYPE_CHECKING`. Read with `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bakery", "flows", "tasks", "storage")

# Lowest first. A module imports modules of its own group and of the ranks below it. Groups that share a rank
# sit side by side and import nothing of each other. `pkg.*` is the package and everything in it.
LAYERS: tuple[dict[str, tuple[str, ...]], ...] = (
    # The words every layer shares: what stages hand on, text for people, the stage plan.
    {"words": ("bakery", "bakery.manifest", "bakery.report", "bakery.stages")},
    # The craft (plain functions, no Prefect, no catalog) with the recipe, whose sections are its parameters
    # (the recipe takes the craft's defaults, the craft's signatures name the sections), the picture account
    # and the test models. Beside it, storage: the store and the catalog.
    {"craft": ("bakery.craft.*", "bakery.recipe.*", "bakery.account", "bakery.testmodels.*"),
     "storage": ("storage.*",)},
    # Plain Python that joins the craft, the recipe and storage: each stage's parameters, the edits, the
    # caption sources, the kohya export, the review studio, the folder watch, the demo, the recipe reference.
    {"services": ("bakery.stage_params", "bakery.models", "bakery.doctor", "bakery.edits", "bakery.caption_sources",
                  "bakery.kohya_export", "bakery.review.*", "bakery.watch", "bakery.demo", "bakery.recipe_doc")},
    {"tasks": ("tasks.*",)},  # Prefect tasks: read inputs, one call into the craft, write the result
    {"flows": ("flows.*",)},  # they only wire tasks together
    {"cli": ("bakery.cli",)},
)
PREFECT_FROM = "tasks"  # the lowest group that may import prefect


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.where})"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _ours(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that `name` (a module, or a name inside one) is, or None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def edges(known: dict[str, Path]) -> list[Edge]:
    """Every import of one of our modules (or of prefect) by one of ours, wherever it stands in the file."""
    found = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _targets(node, module, path.name == "__init__.py"):
                target = "prefect" if name.split(".")[0] == "prefect" else _ours(name, known)
                # Its own packages are loaded before any module runs (`from bakery.review import data` in one).
                if target and target != module and not module.startswith(target + "."):
                    found.add(Edge(module, target, f"{where}:{node.lineno}"))
    return sorted(found, key=lambda e: (e.importer, e.imported, e.where))


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, group) of the module: the group with the longest pattern that takes it."""
    best = None
    for rank, groups in enumerate(LAYERS):
        for group, patterns in groups.items():
            for pattern in patterns:
                root = pattern.removesuffix(".*")
                takes = module == root or (pattern.endswith(".*") and module.startswith(root + "."))
                if takes and (best is None or len(root) > best[0]):
                    best = (len(root), rank, group)
    return best[1:] if best else None


def upward(edge: Edge) -> str | None:
    """Why the import goes against the layers, or None (also for a module in no layer: its own test says so)."""
    if layer_of(edge.importer) is None:
        return None
    rank, group = layer_of(edge.importer)
    if edge.imported == "prefect":
        lowest = next(r for r, groups in enumerate(LAYERS) if PREFECT_FROM in groups)
        return None if rank >= lowest else f"{group} imports prefect (only {PREFECT_FROM} and above do)"
    if layer_of(edge.imported) is None:
        return None
    their_rank, their_group = layer_of(edge.imported)
    if their_group == group or their_rank < rank:
        return None
    side = "beside" if their_rank == rank else "above"
    return f"{group} imports {their_group}, a layer {side} it"


def cycle_through(start: str, graph: dict[str, dict[str, Edge]]) -> list[Edge] | None:
    """The shortest chain of imports from `start` back to itself, or None."""
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target, edge in sorted(graph.get(node, {}).items()):
                if target == start:
                    return paths[node] + [edge]
                if target not in paths:
                    paths[target] = paths[node] + [edge]
                    nxt.append(target)
        frontier = nxt
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS in tests/test_layout.py): {unplaced}"


def test_no_import_cycles():
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges(modules()):
        graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    cycles, seen = [], set()
    for module in sorted(graph):
        cycle = cycle_through(module, graph)
        if cycle and frozenset(e.importer for e in cycle) not in seen:
            seen.add(frozenset(e.importer for e in cycle))
            cycles.append(" -> ".join([module] + [f"{e.imported} ({e.where})" for e in cycle]))
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_no_upward_imports():
    bad = [f"{e}: {why}" for e in edges(modules()) if (why := upward(e))]
    assert not bad, "imports against the layers (lowest first: " + ", ".join(
        "/".join(groups) for groups in LAYERS) + "):\n  " + "\n  ".join(bad)


def test_the_checks_name_what_they_find():
    """A lazy import inside a function is an import like any other; an edge against the layers says which."""
    tree = ast.parse("def f():\n    from tasks.stage import run_stage\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    known = modules()
    assert _ours(_targets(node, "bakery.craft.sweep", False)[-1], known) == "tasks.stage"
    assert upward(Edge("bakery.craft.sweep", "tasks.stage", "x.py:2")) == "craft imports tasks, a layer above it"
    assert upward(Edge("bakery.craft.sweep", "storage.catalog", "x.py:2")) == "craft imports storage, a layer beside it"
    assert upward(Edge("tasks.stage", "storage", "x.py:2")) is None
    assert upward(Edge("bakery.edits", "prefect", "x.py:2")) == "services imports prefect (only tasks and above do)"
