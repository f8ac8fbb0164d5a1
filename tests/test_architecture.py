"""The layout is the architecture: subpackages follow the data flow, imports point down it, no circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferlab"
# Bottom to top: a subpackage imports only those before it (and itself). The top-level modules come last.
LAYERS = ["core", "data", "reports", "backbones", "features", "model", "strategies", "engines", "runs", "deploy",
          "api", "cli"]
MAX_LINES = 450
MAX_MODULES_PER_SUBPACKAGE = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("transferlab", *parts)).removesuffix(".__init__")


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every transferlab module `path` imports, at the top or inside functions (`from x import y` counts y when
    y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transferlab"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name, "transferlab"} for name, path in paths.items()}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports of any length, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_of_any_length_including_imports_inside_functions():
    assert find_cycle(import_graph()) is None


def test_a_lower_layer_never_imports_a_higher_one():
    upward = sorted(f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
                    if layer_of(module) is not None and layer_of(target) is not None
                    and layer_of(target) > layer_of(module))
    assert upward == []


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "may import" in doc.lower(), f"{init.parent.name}/__init__.py does not say what it may import"


def test_no_module_over_the_line_limit_and_no_crowded_subpackage():
    too_long = [f"{path.relative_to(PACKAGE)}: {n}" for path in PACKAGE.rglob("*.py")
                if (n := len(path.read_text().splitlines())) > MAX_LINES]
    crowded = [f"{folder.name}: {n}" for folder in PACKAGE.iterdir() if folder.is_dir()
               if (n := len([p for p in folder.glob("*.py") if p.name != "__init__.py"])) > MAX_MODULES_PER_SUBPACKAGE]
    assert too_long == [] and crowded == []


def test_the_cycle_finder_finds_a_circle():  # the check above must be able to fail
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
