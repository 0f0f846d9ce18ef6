"""The package's layer order, checked on every import (lazy and type-only ones included).

ARCHITECTURE.md explains the layers; `LAYERS` below is the order it describes. A module may
import its own unit (package or top-level module) and any unit of a lower layer; capabilities
never import one another (the command layer composes them); command modules — `cli.py`, `demo.py`,
each `command.py` wherever it sits, `jobs/`, `actors/` — may import anything. And no module imports
itself back through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("s4d_ray.errors", "s4d_ray.limits", "s4d_ray.argtypes")),
    ("geometry", ("s4d_ray.geometry",)),
    ("io", ("s4d_ray.io",)),
    ("track", ("s4d_ray.track",)),
    ("models", ("s4d_ray.models",)),
    ("stages", ("s4d_ray.stages", "s4d_ray.train_loop")),
    ("engine", ("s4d_ray.engine",)),
    (
        "capabilities",
        (
            "s4d_ray.ownvideo",
            "s4d_ray.pointmaps",
            "s4d_ray.viz",
            "s4d_ray.synthetic",
            "s4d_ray.dynadust3r",
            "s4d_ray.tracksto4d",
        ),
    ),
    ("commands", ("s4d_ray.cli", "s4d_ray.demo", "s4d_ray", "jobs", "actors")),
)
FOUNDATION_ORDER = ("s4d_ray.errors", "s4d_ray.limits", "s4d_ray.argtypes")
"""Inside the foundation each module may import only those before it."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    files = [*ROOT.glob("s4d_ray/**/*.py"), *ROOT.glob("jobs/*.py"), *ROOT.glob("actors/*.py")]
    return {module_name(path): path for path in files}


def imported_modules(path: Path, name: str) -> set[str]:
    """Every module `path` imports anywhere in its body (functions, TYPE_CHECKING included);
    `from package import name` counts as importing `package.name` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def unit_of(module: str) -> str | None:
    """The longest unit of `LAYERS` that contains `module` (None: not placed; the package's
    own `__init__` is the unit `s4d_ray`, which holds nothing else)."""
    best = None
    for _, units in LAYERS:
        for unit in units:
            inside = module.startswith(unit + ".") and unit != "s4d_ray"
            if (module == unit or inside) and (best is None or len(unit) > len(best)):
                best = unit
    return best


def layer_of(module: str) -> int:
    if module.rpartition(".")[2] == "command":
        return len(LAYERS) - 1
    unit = unit_of(module)
    return next(i for i, (_, units) in enumerate(LAYERS) if unit in units)


def internal_imports() -> dict[str, set[str]]:
    """Module → the package modules it imports (names that are modules here)."""
    modules = source_modules()
    return {
        name: {
            target
            for target in imported_modules(path, name)
            if target in modules and target != name
        }
        for name, path in modules.items()
    }


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for source, targets in graph.items():
        source_layer, source_unit = layer_of(source), unit_of(source)
        if source_layer == len(LAYERS) - 1:
            continue
        for target in targets:
            target_unit = unit_of(target)
            if target_unit == source_unit or target_unit is None:
                continue
            target_layer = layer_of(target)
            name = LAYERS[source_layer][0]
            if target_layer > source_layer:
                problems.append(f"{source} ({name}) imports {target} ({LAYERS[target_layer][0]})")
            elif target_layer == source_layer and name != "foundation":
                problems.append(f"{source} imports {target}: two {name} units import each other")
            elif name == "foundation" and FOUNDATION_ORDER.index(
                target_unit
            ) > FOUNDATION_ORDER.index(source_unit):
                problems.append(f"{source} imports {target}, later in the foundation")
    return sorted(problems)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in source_modules() if unit_of(name) is None]
    assert not unplaced, f"add these to LAYERS in tests/test_layers.py: {unplaced}"


def test_a_new_package_is_not_placed_by_default() -> None:
    assert unit_of("s4d_ray.newcapability.core") is None
    assert unit_of("s4d_ray.io.fs") == "s4d_ray.io"


def test_no_import_runs_up_the_layers() -> None:
    problems = layer_violations(internal_imports())
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    cycles = import_cycles(internal_imports())
    assert not cycles, "\n".join(" ↔ ".join(group) for group in cycles)


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("s4d_ray.engine.pipeline", "s4d_ray.viz.report", "imports s4d_ray.viz.report"),
        ("s4d_ray.viz.report", "s4d_ray.synthetic.evaluate", "two capabilities units"),
        ("s4d_ray.geometry.vr180", "s4d_ray.io.fs", "(geometry) imports s4d_ray.io.fs (io)"),
        ("s4d_ray.errors", "s4d_ray.limits", "later in the foundation"),
    ],
)
def test_the_check_sees_a_wrong_import(source: str, target: str, expected: str) -> None:
    problems = layer_violations({source: {target}})
    assert len(problems) == 1 and expected in problems[0]


def test_the_check_sees_type_only_and_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from s4d_ray.viz import report\n"
        "def f():\n    import s4d_ray.ownvideo.prepare\n"
    )
    found = imported_modules(source, "s4d_ray.geometry.probe")
    assert {"s4d_ray.viz.report", "s4d_ray.ownvideo.prepare"} <= found


def test_the_cycle_check_sees_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
