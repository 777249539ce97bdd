"""The package's modules import one another without a cycle: each can be read (and loaded) after the
ones it uses. Imports inside functions count too: a deferred import hides a cycle, it does not end it.
And docs/architecture.md, the page that says which file does what, names every source file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "langchain_llamacpp"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports (the package itself, which
    every submodule's import runs first, left out)."""
    modules = {_module_name(path, root): path for path in root.rglob("*.py")}
    known = set(modules) | {PACKAGE + "._native"}  # the extension module
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in known and t not in (PACKAGE, name)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in `graph` (its modules in import order, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node)
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_deferred_imports(tmp_path: Path) -> None:
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_a.py").write_text("import langchain_llamacpp._b as _b\n")
    (package / "_b.py").write_text("def f():\n    from langchain_llamacpp._a import x\n")
    assert find_cycle(import_graph(package)) == [f"{PACKAGE}._a", f"{PACKAGE}._b", f"{PACKAGE}._a"]


def test_no_import_cycle_among_the_modules() -> None:
    graph = import_graph()
    assert f"{PACKAGE}._readers" in graph and f"{PACKAGE}.chat_models" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def _named_in(page: str) -> set[str]:
    """File names a page mentions: `name.py` or `name.{h,cpp}` (each extension of the braces)."""
    names = set(re.findall(r"([\w.]+\.(?:py|pyi|cpp|h))\b", page))
    for stem, exts in re.findall(r"([\w.]+)\.\{([\w,]+)\}", page):
        names.update(f"{stem}.{ext}" for ext in exts.split(","))
    return {Path(name).name for name in names}


def test_the_architecture_page_names_every_source_file() -> None:
    top = ROOT.parent
    named = _named_in((top / "docs" / "architecture.md").read_text())
    sources = [*ROOT.rglob("*.py"), *(top / "native").glob("*.h"), *(top / "native").glob("*.cpp")]
    missing = sorted(str(p.relative_to(top)) for p in sources if p.name not in named and p.name != "__init__.py")
    assert not missing, f"docs/architecture.md does not say what these files do: {missing}"
