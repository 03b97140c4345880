"""Fail on an import cycle between the modules of a Python package.

    python .ci/import_cycles.py [PACKAGE_DIR]   # default: python/pickleguard

Every import statement counts, wherever it stands: at module level, inside a
function (run later, but a cycle all the same), under ``if TYPE_CHECKING``. An
import is an edge to the module it names: ``from . import x`` to the submodule
``x`` if there is one, else to the package; ``from .m import name`` to ``m``. The
packages above a module, which Python imports first, are not edges: every
submodule would otherwise be in a cycle with a package that imports it. Imports
by a string (``importlib.import_module``) are not seen.

Exits 1 naming each cycle and the lines that make it, 0 if there is none, 2 if
the directory is no package or a file does not parse.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

# Module -> imported module -> where: "path:line" of the first such import.
Graph = Dict[str, Dict[str, str]]


def _module_names(root: Path) -> Dict[str, Optional[Path]]:
    """Each module of the package rooted at ``root``, and its source file (None
    for one without Python source: a native extension, or a stub only)."""
    package = root.name
    modules: Dict[str, Optional[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".py", ".pyi", ".so", ".pyd") or "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root).parent.parts)
        stem = path.name.split(".", 1)[0]  # _core.cpython-311-x86_64-linux-gnu.so
        if stem != "__init__":
            parts.append(stem)
        name = ".".join([package, *parts])
        if path.suffix == ".py":
            modules[name] = path
        else:
            modules.setdefault(name, None)
    return modules


def _imported(
    node: ast.AST, module: str, is_package: bool, known: Dict[str, Optional[Path]]
) -> Iterator[str]:
    """The modules of the package that one import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if not isinstance(node, ast.ImportFrom):
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        yield submodule if submodule in known else target


def _resolved(name: str, known: Dict[str, Optional[Path]]) -> Optional[str]:
    """``name`` or the nearest package above it that is a module of ours."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> Graph:
    known = _module_names(root)
    graph: Graph = {name: {} for name in known}
    for module, path in known.items():
        if path is None:
            continue
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(node, module, path.name == "__init__.py", known):
                target = _resolved(name, known)
                if target is not None:
                    graph[module].setdefault(target, f"{path}:{node.lineno}")
    return graph


def cycles(graph: Graph) -> List[List[str]]:
    """One cycle through each group of modules that import each other (Tarjan's
    strongly connected components), as the modules in import order."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1 or module in graph[module]:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [_cycle_in(sorted(group), graph) for group in groups]


def _cycle_in(group: List[str], graph: Graph) -> List[str]:
    """A path from the group's first module back to it, inside the group."""
    start, members = group[0], set(group)
    paths: Dict[str, List[str]] = {start: [start]}
    pending = [start]
    while pending:
        module = pending.pop(0)
        for target in sorted(graph[module]):
            if target == start:
                return paths[module] + [start]
            if target in members and target not in paths:
                paths[target] = paths[module] + [target]
                pending.append(target)
    raise AssertionError("a strongly connected group without a cycle")


def main(argv: List[str]) -> int:
    root = Path(argv[0] if argv else "python/pickleguard")
    if not (root / "__init__.py").is_file():
        print(f"error: {root} is not a package (no __init__.py)", file=sys.stderr)
        return 2
    try:
        graph = import_graph(root)
    except (OSError, SyntaxError, ValueError) as e:
        print(f"error: could not read the package {root}: {e}", file=sys.stderr)
        return 2
    found = cycles(graph)
    for cycle in found:
        print(f"error: import cycle: {' -> '.join(cycle)}", file=sys.stderr)
        for module, target in zip(cycle, cycle[1:]):
            print(f"  {graph[module][target]}: {module} imports {target}", file=sys.stderr)
    if found:
        print(
            "hint: move what both sides need into a module of its own, or pass it as an "
            "argument or a return value instead of importing it back",
            file=sys.stderr,
        )
        return 1
    print(f"ok: no import cycle among the {len(graph)} modules of {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
