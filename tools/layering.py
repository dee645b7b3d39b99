"""``make lint``'s layering check: no private names across modules, no import cycle.

It parses every module of ``branchfs/`` (package ``branchfs``) and ``fuse/`` (package
``branchfs_fuse``) with :mod:`ast`, without importing them, and fails (exit status 1, one
line per finding) on:

- **a private name of another module**: ``from x import _name``, or ``x._name`` where ``x``
  is a name an import bound to one of our modules (``from . import tree`` then
  ``tree._foo``; ``import branchfs.tree as T`` then ``T._foo``; ``branchfs.tree._foo``).
  Dunder names (``__version__``) are public. Every import counts here, wherever it is (in a
  function, under ``if TYPE_CHECKING:``). Private names of other projects' modules
  (``lmdb._Database``) and private attributes of objects (``store._meta``) are out of its
  reach: it knows which names are modules, not the types of values.
- **an import cycle** among our modules, counting the imports that run when a module is
  loaded: those at its top level, also inside a top-level ``if``/``try``/``with`` and in
  class bodies. Imports inside a function run when it is called, after every module is
  loaded, and so are left out; so are those under ``if TYPE_CHECKING:``, which never run
  (mypy resolves them). ``from pkg import name`` depends on module ``pkg.name`` if there is
  one, else on ``pkg`` itself (its ``__init__``); ``import a.b.c`` depends on ``a.b.c``
  (not on the packages above it, whose ``__init__`` Python runs first but which the
  module's own code does not use).
- **a module without a docstring** (the docstring says what the module owns), or of more
  than :data:`MAX_LINES` lines (the charter's "modules at most ~600 lines": split it along
  a concern of its own);
- **a module table out of step with the tree**: docs/architecture.md's tables headed
  ``| module | owns |`` must name every module of ``branchfs/`` and ``fuse/`` (a
  package's ``__init__.py`` aside; ``merge/`` names a whole package), and nothing else.

``python tools/layering.py [--root DIR]`` checks the tree at ``DIR`` (default: this
repository). ``tests/test_layering.py`` proves that each kind of violation is caught.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The most lines a module may have.
MAX_LINES = 600

#: Directory in the repository -> the package it is installed as (pyproject.toml).
PACKAGES = {"branchfs": "branchfs", "fuse": "branchfs_fuse"}


@dataclass
class Module:
    """One parsed module: its dotted name, file, syntax tree and what it imports."""

    name: str
    path: Path
    tree: ast.Module
    #: Every node of ``tree`` (one walk, shared by the checks).
    nodes: list[ast.AST]
    is_package: bool
    #: Our modules it imports when loaded (see the module docstring), with a line each.
    load_deps: dict[str, int] = field(default_factory=dict)


def is_private(name: str) -> bool:
    """``_name`` but not ``__dunder__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.lru_cache(maxsize=512)
def parse(text: str) -> tuple[ast.Module, list[ast.AST]]:
    """The syntax tree of ``text`` and its nodes (cached: the tests check copies)."""
    tree = ast.parse(text)
    return tree, list(ast.walk(tree))


def find_modules(root: Path) -> dict[str, Module]:
    """Every module of the packages under ``root``, by dotted name."""
    mods: dict[str, Module] = {}
    for directory, package in PACKAGES.items():
        base = root / directory
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [package, *rel.parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            tree, nodes = parse(path.read_text())
            mods[name] = Module(name, path, tree, nodes, is_package)
    return mods


def resolve_from(mod: Module, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <node.module> import ...`` in ``mod``."""
    if not node.level:
        return node.module or ""
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    base = ".".join(parts)
    return f"{base}.{node.module}" if node.module else base


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def load_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``body`` that run when the module is loaded."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                yield from load_time_imports(node.body)
            yield from load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody):
                yield from load_time_imports(part)
            for handler in node.handlers:
                yield from load_time_imports(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):  # a class body runs at load time
            yield from load_time_imports(node.body)
        # function bodies run later: their imports are not load-time


def targets(mod: Module, node: ast.Import | ast.ImportFrom, mods: dict[str, Module]) -> list[str]:
    """Our modules an import statement depends on."""
    out: list[str] = []
    if isinstance(node, ast.Import):
        out = [alias.name for alias in node.names if alias.name in mods]
    else:
        source = resolve_from(mod, node)
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in mods:
                out.append(sub)
            elif source in mods:
                out.append(source)
    return out


def private_uses(mod: Module, mods: dict[str, Module]) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for each private name of another of our modules that ``mod`` uses."""
    bound: dict[str, str] = {}  # local name -> our module it names
    for node in mod.nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in mods:
                    bound[alias.asname] = alias.name
                elif not alias.asname:
                    top = alias.name.split(".")[0]
                    if top in mods:
                        bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(mod, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in mods:
                    bound[alias.asname or alias.name] = sub
                elif source in mods and is_private(alias.name):
                    yield node.lineno, f"from {source} import {alias.name}"
    for node in mod.nodes:
        if not isinstance(node, ast.Attribute):
            continue
        chain: list[str] = []
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in bound:
            continue
        chain.reverse()
        target = bound[base.id]
        for i, attr in enumerate(chain):
            if f"{target}.{attr}" in mods:
                target = f"{target}.{attr}"
                continue
            # only the attribute right after the last module: node is the whole chain, and
            # each prefix is visited as its own node, so report where it ends there
            if i == len(chain) - 1 and is_private(attr) and target != mod.name:
                yield node.lineno, f"{base.id}.{'.'.join(chain)} ({target}.{attr})"
            break


def cycles(mods: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components of the load-time import graph that are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in mods[v].load_deps:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in mods[v].load_deps:
                found.append(sorted(comp))

    for name in sorted(mods):
        if name not in index:
            visit(name)
    return found


def table_names(doc: str) -> list[str]:
    """The files and packages (``x/``) that the module tables of ``doc`` name, as paths."""
    names: list[str] = []
    in_table = False
    for line in doc.splitlines():
        if line.startswith("| module | owns |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if not in_table or line.startswith("|---"):
            continue
        cell = line.split("|")[1]
        directory = "branchfs"
        for token in re.findall(r"`([^`]+)`", cell):
            if token == "fuse/" or not token.endswith((".py", "/")):
                continue  # the pointer to the mount's own table; a package's import name
            head, _, tail = token.rpartition("/")
            if head and tail:  # fuse/x.py: the cell's later bare names are in fuse/ too
                directory = head if head in PACKAGES else f"{directory}/{head}"
                names.append(token if head in PACKAGES else f"{directory}/{tail}")
            else:
                names.append(f"{directory}/{token}")
    return names


def table_problems(root: Path) -> list[str]:
    """Modules the tables of docs/architecture.md leave out, and names they give that are
    not in the tree."""
    doc = root / "docs" / "architecture.md"
    if not doc.exists():
        return []
    named = table_names(doc.read_text())
    problems = [
        f"docs/architecture.md: the module table names {n}, which is not in the tree"
        for n in named
        if not (root / n).exists()
    ]
    packages = [n for n in named if n.endswith("/")]
    for directory in PACKAGES:
        for path in sorted((root / directory).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if path.name == "__init__.py" or rel in named:
                continue
            if any(rel.startswith(p) for p in packages):
                continue
            problems.append(f"docs/architecture.md: the module table does not name {rel}")
    return problems


def check(root: Path) -> list[str]:
    """Every finding in the tree at ``root``, one line each (empty: the tree is clean)."""
    mods = find_modules(root)
    problems: list[str] = []
    for mod in mods.values():
        rel = mod.path.relative_to(root)
        if ast.get_docstring(mod.tree) is None:
            problems.append(f"{rel}:1: no module docstring (say what the module owns)")
        lines = mod.path.read_text().count("\n")
        if lines > MAX_LINES:
            problems.append(
                f"{rel}: {lines} lines, more than {MAX_LINES}: split it along a concern"
            )
        for line, what in private_uses(mod, mods):
            problems.append(f"{rel}:{line}: uses a private name of another module: {what}")
        for node in load_time_imports(mod.tree.body):
            for dep in targets(mod, node, mods):
                if dep != mod.name:
                    mod.load_deps.setdefault(dep, node.lineno)
    for comp in cycles(mods):
        members = set(comp)
        edges = [
            f"{m} -> {d} ({mods[m].path.relative_to(root)}:{line})"
            for m in comp
            for d, line in mods[m].load_deps.items()
            if d in members
        ]
        problems.append("import cycle: " + "; ".join(edges))
    return problems + table_problems(root)


def main(argv: list[str] | None = None) -> int:
    """Print each finding; exit status 1 if there is any."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--root", type=Path, default=ROOT, help="the repository to check")
    args = p.parse_args(argv)
    problems = check(args.root.resolve())
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} layering problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
