"""Draw the import graph of the package and check the rules docs/architecture.md sets.

Usage::

    python tools/import_graph.py           # the edges, one per line
    python tools/import_graph.py --check   # exit 1 if a rule is broken

Every import of one project module by another counts, at module level or
inside a function (``TYPE_CHECKING`` blocks aside, which never run). The
rules: the graph has no cycle; no project module is imported inside a
function (a function-level import that exists to break a cycle hides one);
no library function is longer than :data:`MAX_FUNCTION_LINES` lines; and
``api.py`` stays under :data:`MAX_API_LINES` lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

#: Repository folder -> the package it installs as (pyproject.toml's package-dir).
FOLDERS = {"rechunker_core": "rechunker_core", "executors": "rechunker_core.executors"}
MAX_FUNCTION_LINES = 60
MAX_API_LINES = 400

Edge = tuple[str, str, str]  # importer, imported, "module" or "function"


def modules(root: Path) -> dict[str, Path]:
    """Installed module name -> file, for every module of the package."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _inside(tree: ast.AST, kinds: tuple[type, ...], test: str = "") -> set[int]:
    """Ids of the nodes below nodes of ``kinds`` (If nodes: only those testing ``test``)."""
    below: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, kinds) and (not test or test in ast.unparse(getattr(node, "test", ""))):
            below.update(id(n) for n in ast.walk(node) if n is not node)
    return below


def edges(root: Path) -> list[Edge]:
    """Every import of a project module by another."""
    known = modules(root)
    found: dict[tuple[str, str], str] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        type_only = _inside(tree, (ast.If,), "TYPE_CHECKING")
        in_function = _inside(tree, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            where = "function" if id(node) in in_function else "module"
            for target in targets:
                if target in known and target != name:
                    found.setdefault((name, target), where)
    return sorted((a, b, where) for (a, b), where in found.items())


def cycles(graph: list[Edge]) -> list[list[str]]:
    """The import cycles of ``graph`` (one per strongly connected group found)."""
    following: dict[str, set[str]] = {}
    for a, b, _ in graph:
        following.setdefault(a, set()).add(b)
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(following.get(node, ())):
            if nxt in path:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(following):
        if start not in done:
            visit(start, [start])
    return found


def long_functions(root: Path) -> list[str]:
    """Library functions longer than :data:`MAX_FUNCTION_LINES` (docstring included)."""
    long = []
    for path in modules(root).values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length}")
    return long


def problems(root: Path) -> list[str]:
    """Every rule the package breaks, as messages."""
    graph = edges(root)
    found = [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    found += [f"{a} imports {b} inside a function" for a, b, where in graph if where != "module"]
    found += [f"function longer than {MAX_FUNCTION_LINES} lines: {f}" for f in long_functions(root)]
    api_lines = len((root / "rechunker_core" / "api.py").read_text().splitlines())
    if api_lines >= MAX_API_LINES:
        found.append(f"rechunker_core/api.py has {api_lines} lines (limit {MAX_API_LINES})")
    return found


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    if "--check" in argv:
        found = problems(root)
        for problem in found:
            print(problem)
        return 1 if found else 0
    for a, b, where in edges(root):
        print(f"{a} -> {b}" + ("" if where == "module" else f"  ({where})"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
