"""The package's layers, kept true: every import goes down (or stays inside its own layer).

    core (target, problem, dtypes, reference)  <-  kernels  <-  harness  <-  api | sim
        <-  bench  <-  course | demos  <-  the package's entry points (workbench/__init__.py and the
        documented `python -m workbench.<command>` modules)

Every import statement counts, also those inside functions (a hidden upward import is still a
cycle), except under `if __name__ == "__main__":`, where a command line may import the package to
choose the simulator. docs/design.md draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# (layer, group): an import is allowed when the target's layer is lower, or it is the same group.
CORE = {"target", "problem", "dtypes", "reference"}
LAYERS = {"kernels": 1, "harness": 2, "api": 3, "sim": 3, "bench": 4, "course": 5, "demos": 5}
TOP = 6  # workbench/__init__.py and the command modules (compare, report, inspect, assignments)


def layer_of(module: str, package: Path = PACKAGE) -> tuple[int, str]:
    """(layer, group) of a dotted module name inside the package."""
    parts = module.split(".")
    assert parts[0] == package.name, module
    if len(parts) == 1:
        return TOP, "top"
    head = parts[1]
    if head in CORE:
        return 0, "core"
    if head in LAYERS:
        return LAYERS[head], head
    return TOP, "top"


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool, package: Path) -> list[str]:
    if node.level:
        base = importer.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if not prefix.split(".")[0] == package.name:
        return []
    targets = []
    for alias in node.names:  # `from workbench.x import y`: y may be a module of its own
        sub = package.parent.joinpath(*(prefix + "." + alias.name).split("."))
        if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
            targets.append(prefix + "." + alias.name)
        else:
            targets.append(prefix)
    return targets


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports_of(path: Path, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every package-internal import in `path`, main-guard blocks excluded."""
    rel = path.relative_to(package.parent).with_suffix("")
    is_package = rel.name == "__init__"
    importer = ".".join(rel.parts[:-1] if is_package else rel.parts)
    found = []

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names
                             if a.name.split(".")[0] == package.name)
            elif isinstance(child, ast.ImportFrom):
                found.extend((child.lineno, t) for t in _resolve(child, importer, is_package, package))
            walk(child)

    walk(ast.parse(path.read_text(), str(path)))
    return found


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import that goes up a layer or sideways into another group, as readable lines."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        is_package = rel.name == "__init__"
        importer = ".".join(rel.parts[:-1] if is_package else rel.parts)
        mine = layer_of(importer, package)
        for line, target in imports_of(path, package):
            theirs = layer_of(target, package)
            if theirs[0] > mine[0] or (theirs[0] == mine[0] and theirs[1] != mine[1]):
                bad.append(f"{path.relative_to(package.parent)}:{line}: {importer} ({mine[1]}) "
                           f"imports {target} ({theirs[1]})")
    return bad


def test_every_import_goes_down():
    assert upward_imports() == []


def test_an_upward_import_is_caught(tmp_path):
    """The check can fail: a copy of two layers where a kernel imports the harness."""
    pkg = tmp_path / "workbench"
    (pkg / "kernels").mkdir(parents=True)
    (pkg / "harness").mkdir()
    for f in (pkg / "__init__.py", pkg / "kernels" / "__init__.py", pkg / "harness" / "__init__.py"):
        f.write_text("")
    (pkg / "problem.py").write_text("")
    (pkg / "harness" / "runner.py").write_text("from workbench.kernels import rung\n")
    (pkg / "kernels" / "rung.py").write_text(
        "from workbench.problem import x\n"
        "def needs():\n    from ..harness.runner import Needs  # hidden in a function\n"
        "if __name__ == '__main__':\n    import workbench\n")
    bad = upward_imports(pkg)
    assert len(bad) == 1 and "kernels/rung.py:3" in bad[0] and "workbench.harness.runner" in bad[0]


@pytest.mark.parametrize("module, layer", [
    ("workbench.reference", 0), ("workbench.kernels.flash2", 1), ("workbench.harness.runner", 2),
    ("workbench.api.forward", 3), ("workbench.sim.traffic", 3), ("workbench.bench.compare", 4),
    ("workbench.course.assignments", 5), ("workbench", TOP), ("workbench.compare", TOP),
])
def test_layer_names(module, layer):
    assert layer_of(module)[0] == layer
