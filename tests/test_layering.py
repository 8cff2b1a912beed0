"""The floors of the package: a lower layer never imports a higher one, and modules import each
other without loops.

    core (renderloop/*.py) ← renderers, models ← datasets ← trainers ← cluster ← commands (renderloop.cli)

Every import counts, also one inside a function: a lazy import upward is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"renderloop": "renderloop", **{name: f"renderloop.{name}" for name in
           ("renderers", "models", "datasets", "trainers", "cluster")}}  # fmt: skip
LAYERS = {"core": 0, "renderers": 1, "models": 1, "datasets": 2, "trainers": 3, "cluster": 4, "cli": 5}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "renderloop":
        raise ValueError(module)
    if len(parts) > 1 and parts[1] in LAYERS and parts[1] != "core":
        return parts[1]
    return "core"


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if folder == "renderloop" and parts and parts[0] in FOLDERS:
                continue
            found[".".join([package, *parts])] = path
    return found


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "renderloop" or len(parts) < 2:
        return False
    folder = (
        ROOT / (parts[1] if parts[1] in FOLDERS else "renderloop") / Path(*parts[2 if parts[1] in FOLDERS else 1 :])
    )
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def imports(module: str, path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """The package's modules that ``module`` imports, with line numbers (relative imports resolved;
    ``from a import b`` names ``a.b`` where that is a module, else ``a``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if _is_module(sub) else base, node.lineno))
    return [(name, line) for name, line in out if name == "renderloop" or name.startswith("renderloop.")]


def test_the_module_list_sees_every_floor():
    found = modules()
    assert {layer_of(m) for m in found} == set(LAYERS)
    assert "renderloop.cli" in found and "renderloop.config" in found and "renderloop.cluster.launch" in found


def test_no_layer_imports_a_higher_one():
    found = modules()
    wrong = []
    for module, path in found.items():
        own = layer_of(module)
        for target, line in imports(module, path):
            if target not in found:  # a name imported from a module, checked as its module
                continue
            other = layer_of(target)
            upward = LAYERS[other] > LAYERS[own]
            sideways = other != own and LAYERS[other] == LAYERS[own]  # renderers and models stay apart
            if upward or sideways:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_no_import_loops_between_modules():
    found = modules()
    graph = {m: {t for t, _ in imports(m, p, top_level_only=True) if t in found and t != m} for m, p in found.items()}
    loops, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                loops.append(" → ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not loops, "\n".join(loops)


def test_the_checker_finds_an_upward_and_a_looping_import(tmp_path):
    """The walk itself: a core module importing a command, and two modules importing each other."""
    core = tmp_path / "metrics.py"
    core.write_text("def f():\n    from renderloop.cli import main\n")
    assert ("renderloop.cli", 2) in imports("renderloop.metrics", core)
    assert imports("renderloop.metrics", core, top_level_only=True) == []
    rel = tmp_path / "engine.py"
    rel.write_text("from ..cluster.launch import train\n")
    assert ("renderloop.cluster.launch", 1) in imports("renderloop.trainers.engine", rel)
