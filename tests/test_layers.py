"""The import contract of docs/ARCHITECTURE.md: imports only go down the rooms' order, rooms on the
same level stay independent, and no module import cycle exists — counting imports made inside
functions, which Python resolves late but which tie the modules together all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# lowest first; a room may import its own modules and those of lower levels only
LEVELS = [["diffposetalk"], ["engines"], ["export"], ["streaming"], ["server"], ["clients", "bench", "training"],
          ["dpt_live"]]
LEVEL = {room: i for i, rooms in enumerate(LEVELS) for room in rooms}
# the render clients stay light and independent of the model: the wire protocol only
CLIENT_ALLOWED = {"server.protocol"}


def project_modules() -> dict[str, Path]:
    mods = {}
    for room in LEVEL:
        for f in sorted((ROOT / room).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            r = resolve(t)
            if r is not None and r != name:
                found.add(r)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def test_imports_only_go_down(graph):
    wrong = []
    for mod, targets in graph.items():
        room = mod.split(".")[0]
        for t in sorted(targets):
            other = t.split(".")[0]
            if other == room:
                continue
            if LEVEL[other] >= LEVEL[room]:
                wrong.append(f"{mod} -> {t} ({other} is not below {room})")
            elif room == "clients" and t not in CLIENT_ALLOWED:
                wrong.append(f"{mod} -> {t} (clients import only {sorted(CLIENT_ALLOWED)})")
    assert not wrong, "imports against the rooms' order:\n" + "\n".join(wrong)


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components; any component of two or more modules is a cycle
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_contract_sees_function_level_imports(tmp_path):
    """The checker itself: an import inside a function counts."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from engines.networks import Networks\n")
    assert imports_of("streaming.m", f, {"engines.networks": Path(), "streaming.m": f}) == {"engines.networks"}


def test_every_room_is_known():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(LEVEL) | {"tests"}, f"a package outside the rooms: {packages - set(LEVEL)}"
