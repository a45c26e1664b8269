"""The packages' dependencies point one way: core <- faq, core <- channels, all <- bot <- bench.

Read from the source with `ast` (every import, also those inside functions and under
TYPE_CHECKING), so a new import against the grain fails here before it grows roots.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> the first-party packages it must never import
FORBIDDEN = {
    "core": {"bot", "faq", "channels", "bench"},
    "faq": {"bot", "channels", "bench"},
    # channels get a settings protocol, a delivery-report sink and a narrow store from the
    # composition root: nothing of the service (its settings, database or desk)
    "channels": {"bot", "faq", "bench"},
    "bot": {"bench"},  # demo history and benchmarks are tools on top, not the service
}
MAX_LINES = 400
#: modules over MAX_LINES, and why
LONG_MODULES = {
    "bot/settings.py": "every setting in one validated class, as the README's table lists",
    "bot/db/models.py": "every table in one module, read against the migrations",
    "bot/admin/queries.py": "the dashboard's SQL, one function per figure",
    "bot/admin/rollups.py": "the per-day rollups and their catch-up",
    "bot/redis_queue.py": "the Redis Streams inbox with its sweeper",
    "bot/store_webhooks.py": "Shopify and WooCommerce webhooks, each topic a small function",
    "faq/matcher.py": "the matcher's scoring, kept together for speed",
    "faq/semantic.py": "the optional neural mode: model loading, index, adaptation",
    "faq/cli.py": "the faq command line: match, lint, eval, explain, suggest",
    "channels/email.py": "IMAP IDLE polling, threading and SMTP replies",
    "channels/webchat.py": "page, API, uploads, identity, typing and email continuity (to split)",
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The first-party modules `path` imports when it runs: at the top or inside functions,
    not under TYPE_CHECKING. `from pkg import mod` is an edge to `pkg.mod`, not to `pkg`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*up, *([child.module] if child.module else [])])
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
            visit(child)

    visit(tree)
    edges = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != here:
            edges.add(name)
    return edges


def import_cycles(package: str) -> list[list[str]]:
    """Groups of modules that import one another, directly or round a loop (Tarjan)."""
    paths = {module_name(p, ROOT): p for p in modules(package) if "migrations" not in p.parts}
    graph = {name: runtime_imports(path, set(paths), ROOT) for name, path in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            connect(name)
    return cycles


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_against_the_grain(package: str) -> None:
    wrong = []
    for path in modules(package):
        for name in imports_of(path):
            if name.split(".")[0] in FORBIDDEN[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["bot", "channels", "faq", "core"])
def test_no_module_imports_itself_round_a_loop(package: str) -> None:
    """A cycle hides behind imports moved into functions; only TYPE_CHECKING ones are free."""
    cycles = import_cycles(package)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_lazy_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                   "if TYPE_CHECKING:\n    import a\n")
    known = {"a", "b", "c"}
    edges = {p.stem: runtime_imports(p, known, tmp_path) for p in tmp_path.glob("*.py")}
    assert edges == {"a": {"b"}, "b": {"a"}, "c": set()}


def test_the_kernel_is_imported_by_every_package() -> None:
    for package in ("faq", "channels", "bot"):
        assert any(any(n.split(".")[0] == "core" for n in imports_of(p))
                   for p in modules(package)), f"{package} does not use the kernel"


def test_modules_stay_small_or_say_why() -> None:
    long = {}
    for package in ("core", "bot", "channels", "faq"):
        for path in modules(package):
            if "migrations" in path.parts:
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    unexplained = sorted(set(long) - set(LONG_MODULES))
    assert not unexplained, f"over {MAX_LINES} lines without a reason: " + ", ".join(
        f"{m} ({long[m]})" for m in unexplained)
    stale = sorted(set(LONG_MODULES) - set(long))
    assert not stale, f"no longer over {MAX_LINES} lines, drop the reason: {', '.join(stale)}"
