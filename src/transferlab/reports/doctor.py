"""doctor.html and the notebook card of `transferlab doctor`, from plain records (findings as dicts, the
summary, the set-level notes, relative path -> image file for thumbnails)."""

from __future__ import annotations

from pathlib import Path

from transferlab.core.files import atomic_write_bytes
from transferlab.reports.html import jinja_environment, now_text, render_card, thumbnail_uri

SHOWN_PER_KIND = 200  # rows with thumbnails per section: the page stays a few MB; findings.csv has them all
CARD_EXAMPLES = 8
TITLES = {"leak": "Leaks: the same picture in two splits", "conflict": "Conflicts: the same picture under two classes",
          "duplicate": "Duplicates within a class and split", "label": "Likely label errors",
          "outlier": "Outliers"}
SCORES = {"leak": "cosine", "conflict": "cosine", "duplicate": "cosine", "label": "margin", "outlier": "z"}


def write_doctor_html(path: Path, summary: dict, findings: list[dict], notes: list[str],
                      images: dict[str, Path]) -> Path:
    sections = {kind: [_with_thumbnails(row, images) if i < SHOWN_PER_KIND else row
                       for i, row in enumerate(r for r in findings if r["kind"] == kind)]
                for kind in summary["counts"]}
    html = jinja_environment().get_template("doctor.html.j2").render(
        title=f"doctor: {Path(summary['data']).name}", generated=now_text(), summary=summary, sections=sections,
        notes=notes, titles=TITLES, scores=SCORES, pairs=("leak", "conflict", "duplicate"), shown=SHOWN_PER_KIND,
        findings_csv=path.parent / "findings.csv")
    atomic_write_bytes(path, html.encode("utf-8"))
    return path


def render_findings_card(summary: dict, findings: list[dict], notes: list[str], images: dict[str, Path]) -> str:
    """The notebook card: counts per kind, a few thumbnails (the first findings of each kind), the notes."""
    examples = []
    for kind in summary["counts"]:
        examples += [row for row in findings if row["kind"] == kind][:2]
    examples = [row for row in (_with_thumbnails(r, images) for r in examples[:CARD_EXAMPLES]) if row["thumbnail"]]
    return render_card("doctor_card", {"summary": summary, "examples": examples, "notes": notes})


def _with_thumbnails(row: dict, images: dict[str, Path]) -> dict:
    def uri(name: str) -> str | None:
        return thumbnail_uri(images[name]) if name in images else None

    return {**row, "thumbnail": uri(row["path"]), "partner_thumbnail": uri(row["partner"]) if row["partner"] else None}
