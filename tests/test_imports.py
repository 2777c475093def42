"""The package's imports run one way (CLI -> pipeline -> stages -> readers/models/ridge -> config/errors/h5io).

Every ``import`` in toolkit/brainalign counts, at module level or inside a function: a function-level import
runs the moment a caller needs it, so a cycle through one is as real as one at the top. Importing
``brainalign.a.b`` also runs ``brainalign/a/__init__.py``, so the packages on the way count too (except the
importer's own packages: they ran before it did).
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "toolkit" / "brainalign"

# the layers, top to bottom; a module may import its own layer or a lower one (stages: not each other)
CLI = {"brainalign.cli", "brainalign.__main__"}
PIPELINE = ("brainalign.pipeline", "brainalign.cluster")
STAGES = {f"brainalign.{s}" for s in
          ("simulate", "finetune", "extract", "align", "fit", "permutation", "stats", "mlm", "report")}
BASE = {"brainalign.config", "brainalign.errors", "brainalign.h5io", "brainalign.launch", "brainalign.log",
        "brainalign.provenance"}


def modules(pkg: Path = PKG) -> dict:
    """{dotted name: (path, is_package)} of every module under ``pkg``."""
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def import_graph(pkg: Path = PKG) -> dict:
    """{module: {(imported module, line)}}: every internal import, wherever it is in the file."""
    mods = modules(pkg)
    root = pkg.name

    def owner(name):                      # the module a dotted name lives in ("a.b.func" -> "a.b")
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    def with_parents(name, importer):     # importing a.b.c runs a/__init__ and a/b/__init__ first, unless
        parts = name.split(".")           # the importer is inside them (then they ran before it did)
        return {p for p in (".".join(parts[:i]) for i in range(2, len(parts) + 1))
                if not importer.startswith(p + ".")}

    graph = {}
    for mod, (path, is_pkg) in mods.items():
        here = mod if is_pkg else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                targets = [f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full for a in node.names]
            for t in targets:
                if t.split(".")[0] != root:
                    continue
                for m in with_parents(owner(t), mod):
                    if m != mod and m in mods:
                        edges.add((m, node.lineno))
        graph[mod] = edges
    return graph


def cycles(graph: dict) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    adj = {m: {t for t, _ in e} for m, e in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(adj[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def layer(mod: str) -> int:
    if mod in CLI:
        return 4
    if mod.startswith(PIPELINE):
        return 3
    if mod in STAGES:
        return 2
    if mod in BASE:
        return 0
    return 1            # readers, models, ridge, stage keys/table, paths, ...


def describe(graph, comp) -> str:
    inside = set(comp)
    return "\n".join(f"  {m} -> {t} (line {ln})" for m in comp for t, ln in sorted(graph[m]) if t in inside)


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (counting imports inside functions):\n" + "\n".join(
        f"{len(c)} modules: {', '.join(c)}\n{describe(graph, c)}" for c in found)


def test_imports_run_one_way():
    """No import goes up a layer; a stage never imports another stage (the pipeline orders them)."""
    graph = import_graph()
    bad = []
    for mod, edges in sorted(graph.items()):
        for t, ln in sorted(edges):
            if layer(t) > layer(mod) or (mod in STAGES and t in STAGES):
                bad.append(f"{mod} -> {t} (line {ln})")
    assert not bad, "imports against the direction CLI -> pipeline -> stages -> readers -> config:\n  " + \
        "\n  ".join(bad)


def test_the_checker_sees_function_level_cycles(tmp_path):
    """The checker itself: a cycle closed by an import inside a function, and a relative one, are found."""
    pkg = tmp_path / "brainalign"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n    return g\n")
    (pkg / "c.py").write_text("import os\n\ndef g():\n    from brainalign import a\n")
    (pkg / "d.py").write_text("from . import c\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["brainalign.a", "brainalign.c", "brainalign.sub.b"]]
    assert ("brainalign.sub", 1) in graph["brainalign.a"]            # the package on the way counts
