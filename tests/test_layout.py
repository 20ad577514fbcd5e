"""Tests that keep the package's boundaries: the layers, no cycles, a core without I/O, SQL in db.

The layers are drawn in the BRIEF and the README: a room imports only the rooms below it.
Imports under ``if TYPE_CHECKING:`` are only for the type checker and are left out; imports
inside functions (quart, loaded only when serving) count like any other.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tracker"

# The rank of each room (a package under tracker/ or a top-level module): a module may import
# its own room and rooms of a lower rank. Rooms of one rank may import each other, except the
# pairs in APART.
RANKS = {
    "config": 0, "errors": 0, "logs": 0,
    "core": 1,
    "db": 2, "clients": 2,
    "metrics": 3,
    "delivery": 4,
    "intake": 5,
    "live": 6, "context": 6,
    "features": 7,
    "web": 8,
    "service": 9,
    "simulators": 10,
    "devtools": 11,
    "cli": 12,
}
APART = [frozenset({"db", "clients"})]  # the database and the HTTP adapters: strangers
ANYWHERE = {"tracker", "tracker.__main__"}  # the package's own __init__ and ``python -m tracker``
NO_IO = ("trio", "httpx", "quart", "quart_trio", "hypercorn", "sqlite3")

# SQL statements, as this code base writes them (upper-case keywords).
SQL = re.compile(
    r"\bSELECT\b.*?\bFROM\b|\bINSERT\s+(?:OR\s+[A-Z]+\s+)?INTO\b|\bUPDATE\s+\S+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\bCREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX)\b|\bPRAGMA\b",
    re.DOTALL,
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the tracker module it imports (resolved to the deepest one that exists)
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.module} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """``tracker.db.store`` -> ``db``; ``tracker.metrics`` -> ``metrics``."""
    return module.split(".")[1]


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                  "typing.TYPE_CHECKING"):
            for statement in node.body:
                skipped.update(id(n) for n in ast.walk(statement))
    return skipped


def _resolve(name: str) -> str | None:
    """The deepest tracker module that ``name`` (a module, or a name inside one) denotes."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> Iterator[Import]:
    """Every tracker module ``module`` imports at run time."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "tracker" or name.startswith("tracker."):
                target = _resolve(name)
                if target is not None and target != module:
                    yield Import(module, target, path, node.lineno)


def layer_violation(edge: Import) -> str | None:
    """Why ``edge`` breaks the layers, or None."""
    if edge.module in ANYWHERE or edge.target == "tracker":  # tracker.__version__
        return None
    source, target = room(edge.module), room(edge.target)
    for name in (source, target):
        if name not in RANKS:
            return f"tracker.{name} has no layer: give it a rank in tests/test_layout.py RANKS"
    if source == target:
        return None
    if frozenset({source, target}) in APART:
        return f"{source} and {target} must not import each other"
    if RANKS[target] > RANKS[source]:
        return f"{source} (rank {RANKS[source]}) must not import {target} (rank {RANKS[target]})"
    return None


def test_every_import_goes_down_the_layers() -> None:
    problems = [f"{edge}: {why}" for module in MODULES for edge in imports_of(module)
                if (why := layer_violation(edge)) is not None]
    assert problems == [], "\n".join(problems)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    edges: dict[tuple[str, str], Import] = {}
    for module in MODULES:
        for edge in imports_of(module):
            if edge.target != "tracker":
                graph[module].add(edge.target)
                edges.setdefault((module, edge.target), edge)
    cycles = _cycles(graph)
    described = ["\n  ".join(str(edges[(a, b)]) for a in cycle for b in cycle if (a, b) in edges)
                 for cycle in cycles]
    assert cycles == [], "import cycles:\n  " + "\n\n  ".join(described)


def test_the_layer_test_sees_what_it_must() -> None:
    """The test's own machinery, on imports it must catch and ones it must let through."""
    fake = PACKAGE / "core" / "x.py"
    assert layer_violation(Import("tracker.core.x", "tracker.db.store", fake, 1))
    assert layer_violation(Import("tracker.db.x", "tracker.clients.crm", fake, 1))
    assert layer_violation(Import("tracker.nowhere.x", "tracker.core.calls", fake, 1))
    assert layer_violation(Import("tracker.web.x", "tracker.core.calls", fake, 1)) is None
    assert layer_violation(Import("tracker.context", "tracker.live", fake, 1)) is None
    assert layer_violation(Import("tracker.__main__", "tracker.cli.main", fake, 1)) is None
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n")
    assert len(_type_checking_only(tree)) > 1


def test_core_imports_no_io_library() -> None:
    core = sorted(m for m in MODULES if m == "tracker.core" or m.startswith("tracker.core."))
    assert len(core) > 5
    script = ("import importlib, sys\n"
              f"for name in {core!r}:\n"
              "    importlib.import_module(name)\n"
              f"print(' '.join(sorted(m for m in {NO_IO!r} if m in sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.split() == [], (
        f"importing tracker.core pulled in {result.stdout.strip()}: the core does no I/O")


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def sql_outside_db() -> Iterator[str]:
    """Every string literal outside tracker/db/ that holds SQL (docstrings aside); an
    f-string is read whole, with ``?`` for what it interpolates."""
    for module, path in MODULES.items():
        if module == "tracker.db" or module.startswith("tracker.db."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "?"
                               for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings:
                    continue
                text = node.value
            else:
                continue
            if SQL.search(text):
                yield f"{path.relative_to(ROOT)}:{node.lineno}: {text[:80]!r}"


def test_sql_is_written_only_in_db() -> None:
    found = sorted(set(sql_outside_db()))
    assert found == [], "SQL outside tracker/db/ (move it into a db module):\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "SELECT * FROM calls", "select id\n FROM outbox", "INSERT INTO clicks (at) VALUES (?)",
    "INSERT OR IGNORE INTO events", "UPDATE calls SET state = ?", "DELETE FROM outbox",
    "CREATE TABLE x (id)", "CREATE UNIQUE INDEX i ON x (id)", "PRAGMA user_version",
])
def test_the_sql_pattern_knows_statements(text: str) -> None:
    assert SQL.search(text.replace("select", "SELECT"))


@pytest.mark.parametrize("text", [
    "select a file from the list", "the update sets the state", "Insert the card into the page",
])
def test_the_sql_pattern_leaves_prose_alone(text: str) -> None:
    assert not SQL.search(text)
