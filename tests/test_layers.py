"""The project's own import graph (every ``import`` statement, TYPE_CHECKING and function-level
ones included): no circle, no module importing a layer above its own, the core never imports
the tools wing or an adapter, and no module over 300 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layers from the bottom; a module may import its own layer or one below
LAYERS = ("core", "patches", "adapters", "tools")


def _modules() -> dict[str, Path]:
    mods = {}
    for base, pkg in ((ROOT / "neox_acodm", "neox_acodm"), (ROOT / "patches", "neox_acodm.patches")):
        for f in base.rglob("*.py"):
            rel = f.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _layer(mod: str) -> str:
    if mod.startswith("neox_acodm.patches"):
        return "patches"
    if mod.startswith(("neox_acodm.neox", "neox_acodm.megatron")):
        return "adapters"
    if mod.startswith("neox_acodm.tools") or mod == "neox_acodm._bootstrap":
        return "tools"
    return "core"


def _imports(mod: str, path: Path, known: set[str]) -> set[str]:
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for n in names:
            while n and n not in known:  # the deepest project module a name lies in
                n = n.rpartition(".")[0]
            if n and n != mod and n != "neox_acodm":
                out.add(n)
    return out


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle(graph):
    assert _cycles(graph) == []


def test_no_module_imports_a_layer_above_its_own(graph):
    up = [(m, d) for m, deps in graph.items() for d in deps if LAYERS.index(_layer(d)) > LAYERS.index(_layer(m))]
    assert up == []


def test_no_adapter_imports_the_other_adapter(graph):
    bad = [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if m.startswith("neox_acodm.neox")
        and d.startswith("neox_acodm.megatron")
        or m.startswith("neox_acodm.megatron")
        and d.startswith("neox_acodm.neox")
    ]
    assert bad == []


def test_no_private_name_imported_across_modules():
    bad = []
    for base in (ROOT / "neox_acodm", ROOT / "patches"):
        for f in base.rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    bad += [
                        f"{f.relative_to(ROOT)}: {node.module}.{a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
                    if node.module and any(p.startswith("_") and p != "_C" for p in node.module.split(".")[1:]):
                        if not node.module.endswith("_logging"):
                            bad.append(f"{f.relative_to(ROOT)}: {node.module}")
    assert bad == []


def test_no_module_over_300_lines():
    long = {
        str(f.relative_to(ROOT)): n
        for base in (ROOT / "neox_acodm", ROOT / "patches")
        for f in base.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > 300
    }
    assert long == {}


def test_importing_a_module_patches_nothing():
    import subprocess
    import sys

    code = (
        "import sys, neox_acodm.neox, neox_acodm.patches.neox_training, neox_acodm.patches.neox_args, "
        "neox_acodm.megatron.pretrain_gpt; from neox_acodm.patches import hook; "
        "assert not any(type(f).__name__ == '_PostImportFinder' for f in sys.meta_path); "
        "assert sys.excepthook is sys.__excepthook__"
    )
    env = {"NEOX_ACODM_DISABLE": "0", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-S", "-c", "import site; site.main(); " + code], check=True, env=env)
