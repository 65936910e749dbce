"""The layout is the architecture: stream -> model -> index, no arrow back, and no import circle.

Read from the source (every import, also those under TYPE_CHECKING or inside functions), so an arrow
that only a type checker or a rarely run branch would follow counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("stream", "model", "index")  # each may import only those after it


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in LAYERS}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for layer in LAYERS for path in (ROOT / layer).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from model.explain import X` names a module; `from model import Recommender` the package.
        graph[name] = {target for target in imports_of(path) if target in modules and target != name}
    return graph


def test_no_layer_imports_a_layer_above_it() -> None:
    backwards = [
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if LAYERS.index(target.split(".")[0]) < LAYERS.index(module.split(".")[0])
    ]
    assert backwards == []


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    circles: list[list[str]] = []
    state: dict[str, str] = {}  # visiting / done

    def visit(module: str, path: list[str]) -> None:
        state[module] = "visiting"
        for target in sorted(graph[module]):
            if state.get(target) == "visiting":
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
