"""Draw the package's import graph by subpackage (docs/import-graph.png): one box per layer, bottom to top, with its
modules, and an arrow for each pair of layers with imports between them (labelled with how many). A circle would
show as an arrow pointing up; tests/test_architecture.py fails on one, this picture shows the rest."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_architecture import LAYERS, PACKAGE, import_graph, layer_of  # noqa: E402


def layer_modules() -> dict[str, list[tuple[str, int]]]:
    modules: dict[str, list[tuple[str, int]]] = {name: [] for name in LAYERS}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        layer = parts[0] if len(parts) > 1 else path.stem
        if layer in modules and path.name != "__init__.py":
            modules[layer].append((path.stem, len(path.read_text().splitlines())))
    return modules


def layer_edges() -> Counter:
    edges: Counter = Counter()
    for module, targets in import_graph().items():
        for target in targets:
            a, b = layer_of(module), layer_of(target)
            if a is not None and b is not None and a != b:
                edges[(LAYERS[a], LAYERS[b])] += 1
    return edges


def draw(path: Path) -> Path:
    modules, edges = layer_modules(), layer_edges()
    fig, ax = plt.subplots(figsize=(12, 13))
    height, gap = 0.62, 0.38
    y = {name: i * (height + gap) for i, name in enumerate(LAYERS)}
    for name in LAYERS:
        box = FancyBboxPatch((0, y[name]), 6.0, height, boxstyle="round,pad=0.02", fc="#e8f0fa", ec="#2c5d9c", lw=1.4)
        ax.add_patch(box)
        lines = sum(n for _, n in modules[name])
        ax.text(0.1, y[name] + height - 0.13, f"{name}/" if len(modules[name]) > 1 or name not in ("api",) else name,
                fontsize=11, weight="bold", va="top")
        ax.text(5.9, y[name] + height - 0.13, f"{lines:,} lines", fontsize=8, ha="right", va="top", color="#555")
        listing = "  ".join(f"{stem} {n}" for stem, n in modules[name])
        ax.text(0.1, y[name] + 0.12, listing, fontsize=7.2, va="bottom", color="#333", wrap=True)
    for (source, target), count in sorted(edges.items()):
        up = LAYERS.index(target) > LAYERS.index(source)
        offset = 6.15 + 0.28 * LAYERS.index(target) + 0.05 * LAYERS.index(source)
        start, end = (offset, y[source] + height / 2), (offset, y[target] + height / 2)
        arrow = FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, lw=0.6 + 0.08 * min(count, 20),
                                color="#d62728" if up else "#7f8c99", connectionstyle="arc3,rad=0.0", alpha=0.8)
        ax.add_patch(arrow)
    ax.text(0, -0.45, "Each arrow: imports from the layer it leaves to the layer it points at (grey: down the data flow; "
            "red: up, which tests/test_architecture.py refuses). Numbers after module names: lines.", fontsize=8)
    ax.set_xlim(-0.2, 6.2 + 0.28 * len(LAYERS) + 0.8)
    ax.set_ylim(-0.7, len(LAYERS) * (height + gap))
    ax.axis("off")
    ax.set_title("transferlab: import graph by layer (bottom: imported by everything above)", fontsize=13)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


if __name__ == "__main__":
    print(draw(ROOT / "docs" / "import-graph.png"))
