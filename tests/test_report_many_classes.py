"""The report stays readable with many classes: the most-confused sub-matrix with counts beside the full overview,
and a per-class table that sorts by the clicked column (inline script, checked with node when it is here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_colour_run

from transferlab.reports.confusion import most_confused_submatrix
from transferlab.reports.report import CONFUSED_CLASSES, REPORT, write_report

N_CLASSES = 40


def test_the_sub_matrix_keeps_the_classes_in_the_most_errors_with_their_counts():
    confusion = np.diag([10] * 6)
    confusion[1, 4] = 5  # 1 and 4 in 5 + 2 errors, 2 in 2, the others in none
    confusion[4, 1] = 2
    confusion[2, 4] = 2
    part = most_confused_submatrix(confusion.tolist(), list("abcdef"), size=3)
    assert part["classes"] == ["e", "b", "c"]
    assert part["matrix"] == [[10, 2, 0], [5, 10, 0], [2, 0, 10]]
    assert (part["errors_shown"], part["errors_total"], part["max_error"]) == (9, 9, 5)


def test_a_matrix_without_errors_has_an_empty_sub_matrix():
    assert most_confused_submatrix(np.eye(3, dtype=int).tolist(), list("abc"))["classes"] == []


def many_class_metrics(rng: np.random.Generator) -> tuple[list[str], dict]:
    classes = [f"class_{i:02d}" for i in range(N_CLASSES)]
    confusion = np.diag(rng.integers(5, 20, N_CLASSES))
    for _ in range(60):  # errors concentrated on the first 12 classes
        true, predicted = rng.integers(0, 12, 2)
        confusion[true, predicted] += true != predicted
    per_class = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(classes, *rng.random((3, N_CLASSES)), confusion.sum(1))]
    return classes, {"accuracy": 0.8, "top5_accuracy": 0.95, "macro_f1": 0.8, "n": int(confusion.sum()),
                      "per_class": per_class, "confusion_matrix": confusion.tolist()}


@pytest.fixture(scope="module")
def many_class_run(tmp_path_factory) -> Path:
    """A real run folder whose labels and test metrics are rewritten to 40 classes."""
    run = make_colour_run(tmp_path_factory.mktemp("many"), epochs=3)
    classes, test = many_class_metrics(np.random.default_rng(0))
    for name, change in (("model.json", {"classes": classes}), ("metrics.json", {"test": test, "n_classes": N_CLASSES})):
        path = run / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    write_report(run)
    return run


@pytest.fixture(scope="module")
def html(many_class_run) -> str:
    return (many_class_run / REPORT).read_text(encoding="utf-8")


def test_many_classes_show_the_most_confused_sub_matrix_beside_the_overview(many_class_run, html):
    confusion = np.array(json.loads((many_class_run / "metrics.json").read_text())["test"]["confusion_matrix"])
    errors = confusion - np.diag(np.diag(confusion))
    assert 'class="confusion-pair"' in html and "All 40 classes (overview)" in html
    part = html[html.index('id="confused-part"'):]
    part = part[: part.index("</figure>")]
    rows = re.findall(r'<tr><th title="true ([^"]+)">', part)
    confused = {f"class_{i:02d}" for i in np.flatnonzero(errors.sum(0) + errors.sum(1))}
    assert set(rows) == confused and len(rows) <= CONFUSED_CLASSES  # every confused class, and only those
    assert f"{errors.sum()} of {errors.sum()} errors" in part
    worst = np.unravel_index(errors.argmax(), errors.shape)
    cell = rf'title="class_{worst[0]:02d} → class_{worst[1]:02d}" style="background: rgba\(194, 65, 12, 0.75\)">'
    assert re.search(cell + rf"{errors.max()}</td>", part)  # the count in its cell, the darkest shade


def test_few_classes_show_the_plain_matrix(tmp_path):
    run = make_colour_run(tmp_path, epochs=2)
    text = (run / REPORT).read_text(encoding="utf-8")
    assert 'id="confused-part"' not in text and 'alt="confusion matrix"' in text


def test_the_per_class_table_is_sortable_offline(html):
    assert '<table class="sortable" id="per-class">' in html
    assert re.search(r"<script>\s*// Sortable tables", html) and not re.search(r"<script[^>]*\bsrc", html)


SORT_HARNESS = r"""
const [script, tableJson, columnText] = process.argv.slice(-3);  // node -e CODE leaves no script path in argv
const [table, column] = [JSON.parse(tableJson), Number(columnText)];
const header = (text) => ({ textContent: text, attrs: {}, listeners: {},
  getAttribute(n) { return n in this.attrs ? this.attrs[n] : null; }, setAttribute(n, v) { this.attrs[n] = String(v); },
  removeAttribute(n) { delete this.attrs[n]; }, addEventListener(type, f) { this.listeners[type] = f; } });
const headers = table.headers.map(header);
const body = { rows: table.rows.map((cells) => ({ cells: cells.map((text) => ({ textContent: text })) })),
  appendChild(row) { this.rows.splice(this.rows.indexOf(row), 1); this.rows.push(row); } };
global.document = { querySelectorAll: (s) => (s === "table.sortable" ? [{ tBodies: [body], querySelectorAll: () => headers }] : []) };
eval(script);
const order = () => body.rows.map((row) => row.cells[0].textContent);
headers[column].listeners.click();
const first = order();
headers[column].listeners.click();
console.log(JSON.stringify({ first, second: order(), sort: headers[column].attrs["aria-sort"] }));
"""


def test_clicking_a_header_sorts_the_per_class_table_and_again_reverses_it(html, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: the sorting script is checked with node")
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL).group(1)
    table = html[html.index('id="per-class"'):]
    table = table[: table.index("</table>")]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr><td>.*?</tr>", table)]
    support = headers.index("support")  # whole numbers of one and two digits: numbers must not sort as text
    answer = subprocess.run(
        [node, "-e", SORT_HARNESS, script, json.dumps({"headers": headers, "rows": rows}), str(support)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    result = json.loads(answer.stdout)
    count = {row[0]: int(row[support]) for row in rows}
    first, second = ([count[name] for name in result[key]] for key in ("first", "second"))
    assert first == sorted(count.values()) and second == sorted(count.values(), reverse=True)
    assert sorted(result["first"]) == sorted(count) and result["sort"] == "descending"
