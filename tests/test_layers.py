"""
The package's floors, and which way its imports run.

From the bottom: ``estimators`` (torch only), ``common``, ``envs`` (gymnasium only, none of the package), the
algorithms (one sub-package each, never importing another), the package root (its exports), ``zoo`` (the rl-zoo3
launcher), ``benchmark`` (the grid and its report) and ``lab`` (the estimator lab) side by side, and ``cli`` (the
console entry that dispatches to the zoo, the benchmark and the lab). A module imports only its own floor and the
floors below; no group of modules imports itself in a circle. Every import counts, the ones inside functions
included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "sb3_pg_ext"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
ALGORITHMS = ("reinforce", "ispg", "ppo_kl", "grpo")
# floor of each top-level part of the package; an algorithm may import only its own sub-package among the algorithms
FLOORS = {"estimators": 0, "common": 1, "envs": 1, **dict.fromkeys(ALGORITHMS, 2), "": 3, "zoo": 4, "benchmark": 5, "lab": 5}
TOP_FLOOR = 6  # sb3_pg_ext.cli and anything not listed above


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` (module ``name``) imports, resolved to the deepest known module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate:
                targets.add(candidate)
                break
    targets.discard(name)
    return targets


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path, name, known) for name, path in files.items()}


def part(module: str) -> str:
    """The top-level part of the package a module belongs to ('' for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def floor(module: str) -> int:
    return FLOORS.get(part(module), TOP_FLOOR)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if floor(target) > floor(module):
                problems.append(f"{module} imports {target}, a floor above it")
            elif part(module) in ALGORITHMS and part(target) in ALGORITHMS and part(module) != part(target):
                problems.append(f"{module} imports another algorithm, {target}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_a_floor_above_it_or_another_algorithm():
    assert upward_imports(import_graph(ROOT)) == []


def test_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def test_the_estimators_import_torch_only():
    allowed = {"__future__", "torch", "math", "collections", "typing", "dataclasses"}
    assert third_party(ROOT / "estimators.py") - allowed == set()


def test_the_envs_import_none_of_the_package():
    graph = import_graph(ROOT)
    for module, targets in graph.items():
        if part(module) == "envs":
            assert {part(target) for target in targets} <= {"envs"}, (module, targets)


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    root = tmp_path / PACKAGE
    for folder in ("common", "grpo", "reinforce", "zoo", "benchmark"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "estimators.py").write_text("import torch\n")
    (root / "common" / "episodic.py").write_text("from sb3_pg_ext.estimators import reward_to_go\n")
    (root / "grpo" / "grpo.py").write_text("from sb3_pg_ext.reinforce.reinforce import REINFORCE\n")
    (root / "reinforce" / "reinforce.py").write_text("from ..common import episodic\n")
    (root / "zoo" / "cli.py").write_text("def main():\n    from sb3_pg_ext.benchmark import cli\n")
    (root / "benchmark" / "cli.py").write_text("from sb3_pg_ext.zoo.cli import main\n")
    (root / "benchmark" / "grid.py").write_text("from .report import x\n")
    (root / "benchmark" / "report.py").write_text("from sb3_pg_ext.benchmark.grid import y\n")
    return root


def test_the_checks_find_upward_imports_and_cycles(bad_tree: Path):
    graph = import_graph(bad_tree)
    assert graph["sb3_pg_ext.reinforce.reinforce"] == {"sb3_pg_ext.common.episodic"}
    assert upward_imports(graph) == [
        "sb3_pg_ext.grpo.grpo imports another algorithm, sb3_pg_ext.reinforce.reinforce",
        "sb3_pg_ext.zoo.cli imports sb3_pg_ext.benchmark.cli, a floor above it",
    ]
    assert sorted(cycles(graph)) == [
        ["sb3_pg_ext.benchmark.cli", "sb3_pg_ext.zoo.cli"],
        ["sb3_pg_ext.benchmark.grid", "sb3_pg_ext.benchmark.report"],
    ]
