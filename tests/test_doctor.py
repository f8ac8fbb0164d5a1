"""`transferlab doctor`: near-duplicates (leaks, conflicts), likely label errors, outliers and set-level checks on
small generated sets with planted problems; findings.csv, doctor.html, the notebook card and `train --skip`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from conftest import COLOURS, folder_contents
from PIL import Image
from typer.testing import CliRunner

import transferlab
from transferlab.cli.app import app
from transferlab.data.image_checks import SIDE, ImageFacts, read_skip_file, set_checks
from transferlab.data.same_picture import same_picture_scores
from transferlab.model.data_issues import label_issues
from transferlab.runs.doctor import ALIGNED, SAME_COLOURS

CLASSES = ("red", "green", "blue")


def pattern(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 128) -> Image.Image:
    """A smooth random pattern tinted with the class colour: every image its own picture (its own hash)."""
    low = rng.random((6, 6, 3))
    shades = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
    return Image.fromarray(np.clip(np.array(colour) * (0.4 + shades / 255), 0, 255).astype(np.uint8))


def near_copy(source: Path, target: Path, *, scale: float = 1.0, crop: float = 0.0, mirror: bool = False,
              quality: int = 90) -> None:
    image = Image.open(source)
    w, h = image.size
    image = image.crop((round(crop * w), round(crop * h), w, h))
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else image).save(target, quality=quality)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """red/green/blue patterns, 20 each, with planted problems; doctor run once on them."""
    root = tmp_path_factory.mktemp("doctor") / "data"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(20):
            pattern(rng, COLOURS[name]).save(root / name / f"{name}_{i:02d}.jpg", quality=90)
    near_copy(root / "red/red_00.jpg", root / "red/copy_resized.jpg", scale=0.8, quality=70)
    near_copy(root / "green/green_03.jpg", root / "green/copy_mirrored.jpg", mirror=True, quality=80)
    near_copy(root / "blue/blue_05.jpg", root / "blue/copy_cropped.jpg", crop=0.06, scale=0.8)
    near_copy(root / "red/red_07.jpg", root / "green/copy_of_a_red.jpg", quality=85)  # the same picture, two classes
    pattern(rng, COLOURS["blue"]).save(root / "red/really_blue.jpg", quality=90)  # a label error
    board = (np.indices((128, 128)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    Image.fromarray(board).convert("RGB").save(root / "green/odd_one_out.png")  # grey, unlike anything else
    before = folder_contents(root)
    findings = transferlab.doctor(root, out=root.parent / "doctor", quiet=True)
    return {"root": root, "findings": findings, "out": root.parent / "doctor", "before": before}


def pairs_of(findings, *kinds) -> set[frozenset]:
    return {frozenset({row.path, row.partner}) for row in findings.rows if row.kind in kinds}


def test_doctor_finds_resized_mirrored_and_cropped_copies(planted):
    pairs = pairs_of(planted["findings"], "duplicate", "leak")
    for copy, source in (("red/copy_resized.jpg", "red/red_00.jpg"), ("green/copy_mirrored.jpg", "green/green_03.jpg"),
                         ("blue/copy_cropped.jpg", "blue/blue_05.jpg")):
        assert frozenset({copy, source}) in pairs


def test_doctor_pairs_no_two_distinct_pictures(planted):
    for pair in pairs_of(planted["findings"], "duplicate", "leak", "conflict"):
        assert any("copy" in path for path in pair), pair


def test_a_copy_filed_under_another_class_is_a_conflict(planted):
    assert pairs_of(planted["findings"], "conflict") == {frozenset({"green/copy_of_a_red.jpg", "red/red_07.jpg"})}


def test_copies_in_different_splits_are_leaks_and_the_test_copy_is_kept(planted):
    for row in planted["findings"].of_kind("leak"):
        assert row.split != "test"  # path: the copy to leave out; the test image stays
        assert row.split in row.detail


def test_a_wrongly_filed_image_is_a_likely_label_error_with_its_class_suggested(planted):
    errors = {row.path: row for row in planted["findings"].of_kind("label")}
    assert errors["red/really_blue.jpg"].suggested == "blue"
    assert errors["red/really_blue.jpg"].label == "red"


def test_an_image_unlike_its_class_is_an_outlier(planted):
    assert "green/odd_one_out.png" in {row.path for row in planted["findings"].of_kind("outlier")}


def test_mixed_grey_and_colour_is_noted(planted):
    assert any(note.startswith("mixed grey and colour: 1 grey") for note in planted["findings"].notes)


def test_findings_csv_lists_path_kind_score_and_partner_or_suggested_class(planted):
    with (planted["out"] / "findings.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert {"path", "kind", "score", "partner", "suggested"} <= set(rows[0])
    by_path = {(row["path"], row["kind"]): row for row in rows}
    assert by_path["red/really_blue.jpg", "label"]["suggested"] == "blue"
    assert float(by_path["red/really_blue.jpg", "label"]["score"]) > 0
    conflict = next(row for row in rows if row["kind"] == "conflict")
    assert {conflict["path"], conflict["partner"]} == {"green/copy_of_a_red.jpg", "red/red_07.jpg"}
    assert any(row["kind"] == "set" and row["detail"].startswith("mixed grey") for row in rows)
    summary = json.loads((planted["out"] / "findings.json").read_text())
    assert summary["counts"]["conflict"] == 1 and summary["n_images"] == 66


def test_doctor_leaves_the_data_folder_as_it_was(planted):
    assert folder_contents(planted["root"]) == planted["before"]


def test_doctor_html_shows_each_pair_side_by_side_and_the_suggested_class(planted):
    html = (planted["out"] / "doctor.html").read_text()
    conflict = html[html.index('id="conflict"'):html.index('id="duplicate"')]
    assert conflict.count('<img class="thumb"') == 2  # the copy and its partner
    labels = html[html.index('id="label"'):html.index('id="outlier"')]
    assert '<td class="suggested">blue</td>' in labels
    assert 'class="sortable doctor"' in html


def test_findings_show_themselves_as_a_notebook_card(planted):
    card = planted["findings"]._repr_html_()
    assert card.startswith('<div class="transferlab-card"') or 'class="transferlab-card"' in card
    assert "conflict" in card and "data:image/jpeg;base64," in card


def test_train_skip_leaves_the_flagged_files_out_of_training_and_records_them(planted, tmp_path):
    flagged = read_skip_file(planted["out"])
    assert "red/really_blue.jpg" in flagged
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["--quiet", "train", str(planted["root"]), "--skip", str(planted["out"]),
                                      "--epochs", "2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    with (run / "split.csv").open(newline="") as file:
        split = {row["path"]: row["split"] for row in csv.DictReader(file)}
    config = json.loads((run / "config.json").read_text())
    assert config["skipped_by_doctor"] and set(config["skipped_by_doctor"]) <= set(flagged)
    for path in config["skipped_by_doctor"]:
        assert path not in split
    assert all(split.get(path) in (None, "test") for path in flagged)  # the test split stays whole
    assert config["settings"]["split"]["skip"] == str(planted["out"])
    with (run / "skipped.csv").open(newline="") as file:
        reasons = {row["path"]: row["reason"] for row in csv.DictReader(file)}
    assert reasons["red/really_blue.jpg"] == "doctor: label"


def test_doctor_command_prints_the_counts_and_writes_its_folder(planted, tmp_path):
    result = CliRunner().invoke(app, ["doctor", str(planted["root"]), "--out", str(tmp_path / "doc")])
    assert result.exit_code == 0, result.output
    assert "conflict" in result.output and "label" in result.output
    assert (tmp_path / "doc" / "findings.csv").is_file() and (tmp_path / "doc" / "doctor.html").is_file()


def test_a_warm_doctor_decodes_no_image_for_its_hashes_and_finds_the_same(planted, monkeypatch):
    from transferlab.runs import doctor as doctor_module

    decoded = []
    monkeypatch.setattr(doctor_module, "facts_of", lambda paths: decoded.extend(paths) or [])
    again = transferlab.doctor(planted["root"], write=False, quiet=True)
    assert decoded == []
    assert [(r.kind, r.path, r.partner) for r in again.rows] == [(r.kind, r.path, r.partner)
                                                                   for r in planted["findings"].rows]


def test_skip_names_a_missing_findings_file_in_one_line(tmp_path, colour_folder):
    result = CliRunner().invoke(app, ["train", str(colour_folder), "--skip", str(tmp_path / "nowhere.csv")])
    assert result.exit_code != 0
    assert "no findings file" in str(result.exception) or "no findings file" in result.output


def test_confident_learning_flags_only_the_image_another_class_claims():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1, 1, 0])  # the last one looks like class 1
    assert [(i, suggested) for i, suggested, _ in label_issues(probabilities, labels)] == [(5, 1)]


def test_set_checks_note_imbalance_tiny_images_odd_aspects_and_small_classes():
    thumbnail = np.zeros((SIDE, SIDE, 3), np.uint8)
    facts = [ImageFacts(300, 300, False, thumbnail)] * 60 + [ImageFacts(40, 30, False, thumbnail),
                                                             ImageFacts(900, 200, False, thumbnail)]
    labels = np.array([0] * 60 + [1, 1])
    notes = set_checks(facts, labels, ["many", "few"], [f"f{i}.jpg" for i in range(62)], (0.7, 0.15, 0.15))
    assert [note.split(":")[0].split(" (")[0] for note in notes] == [
        "class imbalance", "1 tiny images", "1 odd aspect ratios", "1 class(es) with fewer than 10 images, too few for a 0.7/0.15/0.15 split"]


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium not found: install Debian's "
                    "chromium (`make test` runs scripts/ensure-chromium.sh)")
def test_doctor_page_in_a_browser_shows_thumbnails_and_sorts_by_a_clicked_column(planted):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto((planted["out"] / "doctor.html").as_uri())
        loaded = page.eval_on_selector_all("img.thumb", "images => images.filter(i => i.naturalWidth > 0).length")
        assert loaded >= 2  # the conflict pair at least, decoded by the browser
        counts = planted["findings"].counts()
        kind = max(counts, key=counts.get)
        assert counts[kind] >= 2
        table = page.locator(f"section#{kind} table")

        def scores() -> list[float]:
            return [float(text) for text in table.locator("tbody td.num").all_inner_texts()]

        table.locator("th.num").click()  # ascending
        assert scores() == sorted(scores())
        table.locator("th.num").click()
        assert scores() == sorted(scores(), reverse=True)
        browser.close()


def test_same_picture_tells_a_cropped_mirrored_copy_from_a_recoloured_lookalike():
    picture = Image.fromarray(skimage.data.chelsea())
    w, h = picture.size
    copy = picture.crop((round(0.06 * w), round(0.02 * h), round(0.98 * w), round(0.94 * h)))
    copy = copy.resize((round(0.6 * w), round(0.6 * h))).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    encoded = io.BytesIO()
    copy.save(encoded, "JPEG", quality=70)
    lookalike = Image.fromarray(np.asarray(picture)[..., ::-1])  # the same shapes in other colours
    thumbnails = np.stack([np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BOX).convert("RGB"))
                           for image in (picture, Image.open(encoded), lookalike)])
    aligned, colours = same_picture_scores(thumbnails, np.array([[0, 1], [0, 2]]), min_alignment=-1)
    assert aligned[0] >= ALIGNED and colours[0] <= SAME_COLOURS
    assert colours[1] > SAME_COLOURS


def test_image_facts_survive_the_facts_cache_as_they_were():
    facts = ImageFacts(70_000, 3, True, np.arange(SIDE * SIDE * 3, dtype=np.uint8).reshape(SIDE, SIDE, 3))
    again = ImageFacts.unpacked(np.frombuffer(facts.packed().tobytes(), dtype=np.uint8))
    assert (again.width, again.height, again.grey) == (70_000, 3, True)
    assert np.array_equal(again.thumbnail, facts.thumbnail)
