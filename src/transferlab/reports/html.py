"""The HTML helpers every page shares (report.html, compare, evaluation, notebook cards): the jinja environment,
number formats, images as data: URIs, small readers. A leaf: reports' modules import it, it imports none of them."""

from __future__ import annotations

import base64
import csv
import io
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader

from transferlab.data.decoding import ImageDecodeError, open_image

THUMBNAIL_PX = 128


def thumbnail_uri(path: Path) -> str | None:
    """A small JPEG of the image as a data: URI; None when the file is gone or does not decode."""
    try:
        image = open_image(path, draft_size=(THUMBNAIL_PX, THUMBNAIL_PX))
    except ImageDecodeError:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def png_uris(*paths: Path) -> list[str]:
    """The pictures that exist, as data: URIs."""
    return [uri for uri in map(png_uri, paths) if uri]


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line] if path.is_file() else []


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def now_text() -> str:
    return datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def jinja_environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("transferlab.reports", "templates"),
        autoescape=True,  # class names are folder names: escape everything
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["percent"] = percent
    environment.filters["number"] = lambda value, digits=3: "–" if value is None else f"{value:.{digits}f}"
    return environment


def formatted(row: dict) -> list[str]:
    """Table cells: accuracies as percentages, times in seconds, '-' for what does not apply."""

    def percent(value):
        return "-" if value is None else f"{value:.1%}"

    def number(value, digits=1):
        return "-" if not value else f"{value:.{digits}f}"

    recipe = f" ({row['recipe']} recipe)" if row.get("recipe") else ""
    return [
        row["strategy"] + recipe, row["backbone"], percent(row["test_accuracy"]), percent(row["top5_accuracy"]),
        number(row["train_seconds"]), number(row["extract_seconds"]), number(row["total_seconds"]),
        number(row["images_per_second"], 0),
    ]


def render_card(macro: str, value) -> str:
    """One of the notebook cards (a macro of notebook.html.j2) for `value`."""
    return getattr(jinja_environment().get_template("notebook.html.j2").module, macro)(value)
