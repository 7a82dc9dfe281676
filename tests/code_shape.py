"""The package's shape, read from its source with `ast`: module sizes, function lengths and parameter counts, and
the import graph between its modules (cycles included). tests/test_layout.py holds the package to the rules; run
this file to print the figures for any source tree:

    python tests/code_shape.py [PACKAGE_DIR]      # default: seqshard/ of this repository
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Module:
    name: str  # dotted, e.g. seqshard.engine.driver
    path: Path
    lines: int
    docstring: str | None
    imports: set[str] = field(default_factory=set)  # package modules imported at module level, outside TYPE_CHECKING
    functions: list[tuple[str, int, int]] = field(default_factory=list)  # (qualified name, lines, parameters)


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Parameters a caller can pass: positional, keyword-only and the * / ** catch-alls; `self`/`cls` not counted."""
    arguments = node.args
    names = [a.arg for a in arguments.posonlyargs + arguments.args]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + len(arguments.kwonlyargs) + bool(arguments.vararg) + bool(arguments.kwarg)


def _resolve(module: str, node: ast.ImportFrom, package: str, known: set[str]) -> set[str]:
    if node.level:
        base = module.rsplit(".", node.level)[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    if not target.startswith(package):
        return set()
    found = set()
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        found.add(candidate if candidate in known else target)
    return {name for name in found if name in known}


def read_package(root: Path) -> dict[str, Module]:
    """Every module of the package at `root` (a directory holding __init__.py)."""
    package = root.name
    paths = sorted(root.rglob("*.py"))
    names = {}
    for path in paths:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[path] = ".".join(parts)
    known = set(names.values())
    modules = {}
    for path, name in names.items():
        text = path.read_text()
        tree = ast.parse(text)
        module = Module(name, path, len(text.splitlines()), ast.get_docstring(tree))
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for inner in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
                if isinstance(inner, ast.ImportFrom):
                    module.imports |= _resolve(name, inner, package, known)
                elif isinstance(inner, ast.Import):
                    module.imports |= {alias.name for alias in inner.names if alias.name in known}
        module.imports.discard(name)

        def visit(node: ast.AST, prefix: str, module: Module = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    module.functions.append((f"{prefix}{child.name}", length, _parameters(child)))
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

        visit(tree, f"{name}:")
        modules[name] = module
    return modules


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Every cycle of module-level imports (a parent package importing its own submodule is not counted)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def edges(name: str) -> list[str]:
        return sorted(t for t in modules[name].imports if not t.startswith(name + "."))

    def walk(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in edges(name):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            walk(name)
    return cycles


def figures(root: Path) -> dict[str, object]:
    modules = read_package(root)
    functions = [(name, length, params) for m in modules.values() for name, length, params in m.functions]
    largest = max(modules.values(), key=lambda m: m.lines)
    longest = max(functions, key=lambda f: f[1])
    widest = max(functions, key=lambda f: f[2])
    top_level = sorted(m.name for m in modules.values() if m.name.count(".") == 1 and m.path.name != "__init__.py")
    return {
        "modules": len(modules),
        "modules at top level": len(top_level),
        "largest module": f"{largest.name} ({largest.lines} lines)",
        "longest function": f"{longest[0]} ({longest[1]} lines)",
        "most parameters": f"{widest[0]} ({widest[2]})",
        "import cycles": len(import_cycles(modules)),
    }


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "seqshard"
    for key, value in figures(root.resolve()).items():
        print(f"{key}: {value}")
