"""Package structure: no import cycle anywhere in lrdnb, no module importing another's private
names, functions short enough to read on one screen."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lrdnb"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import in the file, lazy ones too."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target.startswith("lrdnb"):
                subs = [f"{target}.{n}" for n in names if (PKG.parent / f"{target}.{n}".replace(".", "/")).exists()
                        or (PKG.parent / (f"{target}.{n}".replace(".", "/") + ".py")).exists()]
                out.append((target, [n for n in names if f"{target}.{n}" not in subs]))
                out += [(s, []) for s in subs]
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("lrdnb")]
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, _ in _imports(p):
            if target in mods and target != m and not m.startswith(target + "."):  # a package's own parent: implicit
                graph[m].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle_in_the_package():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_names():
    bad = [f"{_module_name(p)} imports {n} from {t}" for p in PKG.rglob("*.py") for t, names in _imports(p)
           for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, bad


@pytest.mark.parametrize("sub", ["rankopt"])
def test_functions_fit_on_a_screen(sub):
    """No function of the rank search is longer than ~60 lines of code (docstring excluded)."""
    long = []
    for p in (PKG / sub).rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                n = body[-1].end_lineno - body[0].lineno + 1 if body else 0
                if n > 60:
                    long.append(f"{p.name}:{node.name} {n} lines")
    assert not long, long
