"""The package's layering, checked by walking every module's imports with `ast`.

Layers, bottom to top; a module may import its own layer or lower ones, never higher
(docs/architecture.md says what each holds and why the order is this one). Imports
inside functions count too: a lazy import is still a dependency. And no cycles between
modules, lazy or not.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import rollserve

PACKAGE = Path(rollserve.__file__).parent
LAYERS = ["core", "kernels", "executor", "weight_sync", "scheduler", "frontend", "api", "rollout",
          "tools"]
# top-level modules and packages that are tools over everything else
TOOLS = {"bench", "eval", "cli", "convert", "launch_server", "__init__", "__main__"}
BOTTOM = {"version"}  # imports nothing


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    if top in BOTTOM:
        return 0
    if top in TOOLS:
        return LAYERS.index("tools")
    return LAYERS.index(top)


def imports_of(path: Path, module: str) -> Set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rollserve"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if not name.startswith("rollserve"):
                continue
            # `from pkg import mod` names a module when pkg/mod.py exists
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                found.add(sub if sub in MODULES else name)
    return {m for m in found if m != "rollserve"}


MODULES: Dict[str, Path] = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH: Dict[str, Set[str]] = {m: {i for i in imports_of(p, m) if i in MODULES}
                              for m, p in MODULES.items()}


def test_no_import_points_up():
    upward = [f"{m} -> {i}" for m, deps in GRAPH.items() for i in deps
              if layer_of(i) > layer_of(m)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_core_imports_nothing_of_rollserve():
    core = [f"{m} -> {i}" for m, deps in GRAPH.items() if layer_of(m) == 0
            for i in deps if not i.startswith("rollserve.core")]
    assert not core, "\n".join(core)


def test_no_import_cycles():
    cycles: List[List[str]] = []
    state: Dict[str, int] = {}  # 1: on the stack, 2: done
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if d.startswith(m + "."):  # a package importing its own submodules
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_the_package():
    assert len(MODULES) > 80 and "rollserve.core.forward_context" in MODULES
    assert "rollserve.executor.model_runner" in GRAPH["rollserve.scheduler.scheduler"]


def _from_package_imports(path: Path) -> Set[str]:
    """The packages a module reads names from with `from rollserve.pkg import name`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and not node.level and node.module
            and node.module.startswith("rollserve") and node.module in MODULES
            and MODULES[node.module].name == "__init__.py"}


def _reaches(start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(GRAPH.get(m, ()))
    return False


def test_no_module_imports_from_a_package_that_imports_it():
    """`from rollserve.kernels import x` inside rollserve/kernels/linear.py reads the package
    while its __init__ may still be importing linear: a cycle the graph above does not see
    (it skips a package's edges to its own submodules)."""
    loops = [f"{m} <- {pkg}" for m, p in MODULES.items() for pkg in _from_package_imports(p)
             if m.startswith(pkg + ".") and _reaches(pkg, m)]
    assert not loops, "modules importing from a package whose __init__ imports them:\n" + \
        "\n".join(loops)
