"""The Keras-style model summary as a record (layer rows and parameter totals) and its renderings: a rich table
for the console, JSON for the run folder (summary.json), HTML for notebooks. `model.summary` computes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.table import Table

from transferlab.reports.html import render_card

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerRow:
    """One row of a summary; `level` 0 is a top-level child of the model, 1 a child of that, and so on."""

    name: str
    type: str
    level: int
    output_shape: Shape | list[Shape] | None  # without the batch dimension; None: not run by the forward pass
    params: int
    trainable: int

    @property
    def status(self) -> str:
        """'trainable', 'frozen', 'partly trainable' or '' (no parameters)."""
        if self.params == 0:
            return ""
        if self.trainable == self.params:
            return "trainable"
        return "frozen" if self.trainable == 0 else "partly trainable"

    @property
    def shape_text(self) -> str:
        if self.output_shape is None:
            return "not used"
        shapes = self.output_shape if isinstance(self.output_shape, list) else [self.output_shape]
        return ", ".join("×".join(map(str, shape)) or "scalar" for shape in shapes)


@dataclass(frozen=True)
class Summary:
    """Rows plus totals over every parameter of the model (shared parameters counted once)."""

    title: str
    input_shape: Shape  # without the batch dimension
    rows: list[LayerRow]
    total: int
    trainable: int

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    def to_dict(self) -> dict:
        rows = [{**asdict(row), "status": row.status, "output": row.shape_text} for row in self.rows]
        return {
            "title": self.title,
            "input_shape": list(self.input_shape),
            "rows": rows,
            "total": self.total,
            "trainable": self.trainable,
            "non_trainable": self.non_trainable,
        }

    def _repr_html_(self) -> str:
        return render_card("model_summary", self)  # the layer table as the run report shows it

    @classmethod
    def from_dict(cls, value: dict) -> Summary:
        """The inverse of to_dict (summaries are stored in run folders as JSON)."""
        rows = [
            LayerRow(row["name"], row["type"], row["level"], _shape_from_json(row["output_shape"]), row["params"],
                     row["trainable"])
            for row in value["rows"]
        ]
        return cls(value["title"], tuple(value["input_shape"]), rows, value["total"], value["trainable"])

    def table(self) -> Table:
        table = Table(
            title=self.title,
            caption=(
                f"Total params: {self.total:,}\nTrainable params: {self.trainable:,}\n"
                f"Non-trainable params: {self.non_trainable:,}"
            ),
            caption_justify="left",
        )
        table.add_column("layer")
        table.add_column("type")
        table.add_column("output shape", justify="right")
        table.add_column("params", justify="right")
        table.add_column("trainable")
        colours = {"trainable": "green", "frozen": "cyan", "partly trainable": "yellow"}
        for row in self.rows:
            style = "bold" if row.level == 0 else "dim" if row.output_shape is None else None
            status = f"[{colours[row.status]}]{row.status}[/]" if row.status else ""
            table.add_row("  " * row.level + row.name, row.type, row.shape_text, f"{row.params:,}", status, style=style)
        return table


def _shape_from_json(shape) -> Shape | list[Shape] | None:
    """JSON turns tuples into lists: a list of lists was several outputs, a list of numbers one shape."""
    if shape is None:
        return None
    if shape and isinstance(shape[0], list):
        return [tuple(s) for s in shape]
    return tuple(shape)
