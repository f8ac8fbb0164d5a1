"""Tests for transferlab.data.dataset: layouts, splits, skipped files and robust decoding."""

import csv
import io
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from rich.console import Console

from transferlab.core.errors import TransferlabError
from transferlab.data import decoding
from transferlab.data.dataset import DatasetSplit, Skipped, load_dataset
from transferlab.data.decoding import ImageDecodeError, open_image

CALTECH_EXCLUDED = ["BACKGROUND_Google", "Motorbikes", "airplanes", "Faces_easy", "Faces"]


def write_image(path: Path, color=(200, 30, 30), size=(8, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def make_classes(root: Path, counts: dict[str, int]) -> Path:
    """root/<class>/img_<i>.png for each class, with counts[class] images, each a colour of its own (identical
    files would be dropped as duplicates)."""
    for cls, count in counts.items():
        folder = zlib.crc32(f"{root.name}/{cls}".encode()) % 256  # train/a and test/a differ too
        for i in range(count):
            write_image(root / cls / f"img_{i:03d}.png", color=(i % 251, i // 251, folder))
    return root


def class_names_in(dataset: DatasetSplit, split: str) -> Counter:
    return Counter(dataset.classes[label] for label in dataset.subsets()[split].labels)


def split_of_each_path(dataset: DatasetSplit) -> dict[Path, str]:
    return {path: name for name, subset in dataset.subsets().items() for path in subset.paths}


# --- folders layout ------------------------------------------------------------------------------------------


def test_class_folders_are_split_70_15_15_and_stratified(tmp_path):
    root = make_classes(tmp_path / "data", {"cat": 40, "dog": 40, "eel": 40})
    dataset = load_dataset(root)
    assert dataset.layout == "folders"
    assert dataset.classes == ["cat", "dog", "eel"]
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (84, 18, 18)
    assert class_names_in(dataset, "validation") == {"cat": 6, "dog": 6, "eel": 6}
    assert class_names_in(dataset, "test") == {"cat": 6, "dog": 6, "eel": 6}
    assert dataset.train.labels.dtype == np.int64
    all_paths = [p for subset in dataset.subsets().values() for p in subset.paths]
    assert len(set(all_paths)) == 120 and all(p.is_absolute() for p in all_paths)
    assert not dataset.test_is_validation


def test_labels_match_the_class_folder_of_each_path(tmp_path):
    dataset = load_dataset(make_classes(tmp_path / "data", {"a": 10, "b": 10}))
    for subset in dataset.subsets().values():
        assert [dataset.classes[label] for label in subset.labels] == [p.parent.name for p in subset.paths]


def test_split_is_deterministic_per_seed(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 30, "b": 30})
    first, again, other = load_dataset(root, seed=1), load_dataset(root, seed=1), load_dataset(root, seed=2)
    assert split_of_each_path(first) == split_of_each_path(again)
    assert split_of_each_path(first) != split_of_each_path(other)


def test_custom_split_fractions_are_respected(tmp_path):
    dataset = load_dataset(make_classes(tmp_path / "data", {"a": 50, "b": 50}), split=(0.5, 0.3, 0.2))
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (50, 30, 20)


def test_zero_test_fraction_uses_validation_as_test(tmp_path):
    dataset = load_dataset(make_classes(tmp_path / "data", {"a": 10, "b": 10}), split=(0.8, 0.2, 0))
    assert dataset.test_is_validation
    assert dataset.test.paths == dataset.validation.paths and len(dataset.validation) == 4


@pytest.mark.parametrize("split", [(0.7, 0.2, 0.2), (0.9, -0.1, 0.2), (0.7, 0.3), (1.0, 0.0, 0.0), ("a", 0.5, 0.5)])
def test_invalid_split_fractions_are_an_error(tmp_path, split):
    root = make_classes(tmp_path / "data", {"a": 5, "b": 5})
    with pytest.raises(TransferlabError, match="invalid split fractions") as error:
        load_dataset(root, split=split)
    assert error.value.hint


def test_tiny_classes_still_get_a_training_image(tmp_path):
    root = make_classes(tmp_path / "data", {"big": 30, "tiny": 2})
    for seed in range(5):
        counts = load_dataset(root, seed=seed).class_counts()
        assert counts["tiny"]["train"] >= 1 and sum(counts["tiny"].values()) == 2


def test_too_few_images_to_split_is_an_error(tmp_path):
    with pytest.raises(TransferlabError, match="too few to split"):
        load_dataset(make_classes(tmp_path / "data", {"a": 1, "b": 1}))


def test_symlinked_image_files_are_followed(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6})
    (root / "a" / "linked.png").symlink_to(write_image(tmp_path / "elsewhere" / "x.png"))
    dataset = load_dataset(root)
    assert root / "a" / "linked.png" in split_of_each_path(dataset)


def test_nested_folders_inside_a_class_belong_to_that_class(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6})
    write_image(root / "a" / "more" / "deep.png")
    dataset = load_dataset(root)
    assert sum(dataset.class_counts()["a"].values()) == 7


# --- pre-split folders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names", [("train", "validation", "test"), ("training", "val", "testing"), ("Training_Set", "VALID", "Test_Set")]
)
def test_presplit_folders_are_recognised_under_aliases(tmp_path, names):
    root = tmp_path / "data"
    for folder, count in zip(names, (6, 3, 2)):
        make_classes(root / folder, {"a": count, "b": count})
    dataset = load_dataset(root)
    assert dataset.layout == "presplit" and not dataset.test_is_validation
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (12, 6, 4)
    assert {p.parent.parent.name for p in dataset.validation.paths} == {names[1]}


def test_presplit_without_validation_holds_out_15_percent_of_train(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "train", {"a": 20, "b": 20})
    make_classes(root / "test", {"a": 5, "b": 5})
    dataset = load_dataset(root)
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (34, 6, 10)
    assert all(p.parent.parent.name == "train" for p in dataset.validation.paths)
    assert class_names_in(dataset, "validation") == {"a": 3, "b": 3}


def test_presplit_without_test_uses_validation_as_test(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "train", {"a": 6, "b": 6})
    make_classes(root / "val", {"a": 2, "b": 2})
    dataset = load_dataset(root)
    assert dataset.test_is_validation and dataset.test.paths == dataset.validation.paths
    assert len(dataset.train) == 12


def test_empty_presplit_test_folder_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "train", {"a": 6, "b": 6})
    (root / "test" / "a").mkdir(parents=True)
    with pytest.raises(TransferlabError, match="test split is empty"):
        load_dataset(root)


def test_split_folders_beside_other_folders_are_an_error(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "train", {"a": 6, "b": 6})
    make_classes(root, {"stray": 1})
    with pytest.raises(TransferlabError, match="stray"):
        load_dataset(root)


# --- split lists ---------------------------------------------------------------------------------------------


def write_lists(folder: Path, lists: dict[str, list[str]]) -> None:
    for name, lines in lists.items():
        (folder / name).write_text("\n".join(lines) + "\n")


def test_split_lists_define_train_and_test_with_validation_from_train(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 12, "b": 12})
    write_lists(root, {"train.txt": [f"{c}/img_{i:03d}.png" for c in "ab" for i in range(10)],
                       "test.txt": [f"{c}/img_{i:03d}.png" for c in "ab" for i in range(10, 12)]})
    dataset = load_dataset(root)
    assert dataset.layout == "lists"
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (17, 3, 4)
    assert {p.name for p in dataset.test.paths} == {"img_010.png", "img_011.png"}


def test_split_lists_use_val_txt_when_present(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 4, "b": 4})
    write_lists(root, {"train.txt": ["a/img_000.png", "a/img_001.png", "b/img_000.png", "b/img_001.png"],
                       "val.txt": ["a/img_002.png", "b/img_002.png"], "test.txt": ["a/img_003.png", "b/img_003.png"]})
    dataset = load_dataset(root)
    assert sorted(p.name for p in dataset.validation.paths) == ["img_002.png", "img_002.png"]


def test_split_list_paths_resolve_inside_the_one_subfolder_holding_them(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "ObjectCategories", {"a": 6, "b": 6})
    write_lists(root, {"train.txt": [f"{c}/img_{i:03d}.png" for c in "ab" for i in range(5)],
                       "test.txt": ["a/img_005.png", "b/img_005.png"]})
    dataset = load_dataset(root)
    assert all(p.parent.parent == root / "ObjectCategories" for p in dataset.test.paths)


def test_file_listed_in_two_splits_is_an_error(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6})
    write_lists(root, {"train.txt": [f"{c}/img_{i:03d}.png" for c in "ab" for i in range(6)],
                       "test.txt": ["a/img_000.png", "b/img_005.png"]})
    with pytest.raises(TransferlabError, match="more than one split"):
        load_dataset(root)


def test_train_list_without_test_list_is_an_error(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 3, "b": 3})
    write_lists(root, {"train.txt": ["a/img_000.png"]})
    with pytest.raises(TransferlabError, match="no test.txt"):
        load_dataset(root)


# --- split.csv round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.8, 0.2, 0.0)])
def test_split_csv_round_trip_reproduces_the_exact_split(tmp_path, fractions):
    root = make_classes(tmp_path / "data", {"a": 20, "b": 15, "c": 10})
    original = load_dataset(root, split=fractions, seed=3)
    original.write_split_csv(tmp_path / "split.csv")
    again = load_dataset(root, split_csv=tmp_path / "split.csv")
    assert again.layout == "csv" and again.classes == original.classes
    assert again.test_is_validation == original.test_is_validation
    for name, subset in original.subsets().items():
        assert again.subsets()[name].paths == subset.paths
        assert again.subsets()[name].labels.tolist() == subset.labels.tolist()


def test_split_csv_stores_paths_relative_to_root(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6})
    load_dataset(root).write_split_csv(tmp_path / "split.csv")
    rows = list(csv.DictReader((tmp_path / "split.csv").read_text().splitlines()))
    assert set(rows[0]) == {"split", "path", "class"}
    assert all(row["path"] == f"{row['class']}/{Path(row['path']).name}" for row in rows)


def test_split_csv_cannot_be_combined_with_class_filters(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6, "c": 6})
    load_dataset(root).write_split_csv(tmp_path / "split.csv")
    with pytest.raises(TransferlabError, match="cannot be combined"):
        load_dataset(root, split_csv=tmp_path / "split.csv", exclude=["c"])


# --- skipped files -------------------------------------------------------------------------------------------


def test_unusable_files_are_skipped_with_reasons(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "text.jpg").write_text("not really a jpeg")
    (root / "b" / "notes.txt").write_text("shot on a sunny day")
    (root / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    dataset = load_dataset(root)
    reasons = {Path(item.path).name: item.reason for item in dataset.skipped}
    assert reasons == {"empty.jpg": "empty file", "text.jpg": "not an image (UnidentifiedImageError)",
                       "notes.txt": "unsupported extension .txt"}
    assert sum(len(subset) for subset in dataset.subsets().values()) == 12


def test_skipped_csv_lists_bad_files_with_reasons(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6})
    (root / "a" / "empty.png").write_bytes(b"")
    load_dataset(root).write_skipped_csv(tmp_path / "skipped.csv")
    rows = list(csv.reader((tmp_path / "skipped.csv").read_text().splitlines()))
    assert rows == [["path", "reason"], ["a/empty.png", "empty file"]]


def test_skipped_csv_has_a_header_even_when_nothing_was_skipped(tmp_path):
    load_dataset(make_classes(tmp_path / "data", {"a": 6, "b": 6})).write_skipped_csv(tmp_path / "skipped.csv")
    assert (tmp_path / "skipped.csv").read_text().splitlines() == ["path,reason"]


def test_without_drops_files_that_failed_later_and_records_them(tmp_path):
    dataset = load_dataset(make_classes(tmp_path / "data", {"a": 10, "b": 10}))
    victim = dataset.train.paths[0]
    smaller = dataset.without({victim: "truncated image"})
    assert victim not in smaller.train.paths and len(smaller.train) == len(dataset.train) - 1
    assert len(smaller.train.labels) == len(smaller.train.paths)
    assert smaller.skipped == [Skipped(str(victim), "truncated image")]
    assert victim in dataset.train.paths  # the original is left as it was


def test_without_refuses_to_empty_a_class(tmp_path):
    dataset = load_dataset(make_classes(tmp_path / "data", {"a": 10, "b": 10}))
    a_train = [p for p, label in zip(dataset.train.paths, dataset.train.labels) if label == 0]
    with pytest.raises(TransferlabError, match="no usable training images: a"):
        dataset.without({p: "truncated image" for p in a_train})


# --- class selection and errors ------------------------------------------------------------------------------


def test_exclude_and_include_select_classes(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6, "c": 6, "d": 6})
    assert load_dataset(root, exclude=["b"]).classes == ["a", "c", "d"]
    assert load_dataset(root, include=["d", "a"]).classes == ["a", "d"]


def test_unknown_class_name_lists_the_available_classes(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6, "c": 6})
    with pytest.raises(TransferlabError, match="unknown class name") as error:
        load_dataset(root, exclude=["zebra"])
    assert error.value.hint == "available classes: a, b, c"


def test_max_per_class_caps_each_class_reproducibly(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 30, "b": 8})
    dataset = load_dataset(root, max_per_class=10, seed=4)
    counts = {cls: sum(n.values()) for cls, n in dataset.class_counts().items()}
    assert counts == {"a": 10, "b": 8}
    assert split_of_each_path(dataset) == split_of_each_path(load_dataset(root, max_per_class=10, seed=4))


def test_fewer_than_two_classes_is_an_error(tmp_path):
    with pytest.raises(TransferlabError, match="need at least two classes, found 1: a") as error:
        load_dataset(make_classes(tmp_path / "data", {"a": 6}))
    assert "subfolder" in error.value.hint


def test_class_without_usable_images_is_an_error(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 6, "b": 6})
    (root / "c").mkdir()
    (root / "c" / "broken.jpg").write_text("oops")
    with pytest.raises(TransferlabError, match="no usable training images: c"):
        load_dataset(root)


def test_missing_data_folder_is_an_error(tmp_path):
    with pytest.raises(TransferlabError, match="data folder not found"):
        load_dataset(tmp_path / "nowhere")


def test_summary_table_shows_counts_totals_and_skipped(tmp_path):
    root = make_classes(tmp_path / "data", {"a": 20, "b": 20})
    (root / "a" / "empty.png").write_bytes(b"")
    console = Console(record=True, width=100)
    console.print(load_dataset(root).summary_table())
    text = console.export_text()
    assert "validation" in text and "1 file(s) skipped" in text
    total_row = next(line for line in text.splitlines() if "total" in line)
    assert [cell.strip() for cell in total_row.split("│")[1:-1]] == ["total", "28", "6", "6"]


# --- open_image ----------------------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_cmyk_image_decodes_to_rgb(tmp_path):
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(path)
    image = open_image(path)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 0, 0)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    image = open_image(path)
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_palette_image_decodes_to_rgb():
    palette_image = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    image = open_image(encoded(palette_image, "GIF"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (10, 200, 30)


def test_transparent_pixels_are_composited_on_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    image = open_image(encoded(rgba, "PNG"))
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 0)]


def test_grayscale_with_alpha_is_composited_on_white():
    image = open_image(encoded(Image.new("LA", (2, 2), (0, 0)), "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # rotate 90 degrees clockwise on display
    image = open_image(encoded(Image.new("RGB", (40, 20), "blue"), "JPEG", exif=exif))
    assert image.size == (20, 40)


def test_draft_size_decodes_large_jpegs_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), "green").save(path)
    assert open_image(path).size == (2000, 1000)
    assert open_image(path, draft_size=(250, 125)).size == (250, 125)
    assert open_image(path, draft_size=(300, 150)).size == (500, 250)  # never below the asked size


def test_truncated_jpeg_raises_image_decode_error():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    whole = encoded(noise, "JPEG")
    with pytest.raises(ImageDecodeError) as error:
        open_image(whole[: len(whole) // 2])
    assert error.value.message == "truncated image"


def test_non_image_raises_image_decode_error(tmp_path):
    (tmp_path / "fake.jpg").write_text("hello")
    with pytest.raises(ImageDecodeError) as error:
        open_image(tmp_path / "fake.jpg")
    assert error.value.message == "not an image (UnidentifiedImageError)"
    assert isinstance(error.value, TransferlabError)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(12, 10), (30, 30)])  # above the limit; above twice the limit (PIL's own error)
def test_images_above_the_pixel_limit_are_refused(monkeypatch, size):
    monkeypatch.setattr(decoding, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError) as error:
        open_image(encoded(Image.new("RGB", size), "PNG"))
    assert error.value.message.startswith("image too large")


def test_pixel_limit_is_set_for_pillow():
    assert Image.MAX_IMAGE_PIXELS == decoding.MAX_IMAGE_PIXELS == 120_000_000


# --- integration on ../shared --------------------------------------------------------------------------------


@pytest.fixture
def shared_datasets() -> Path:
    root = Path(__file__).parents[2] / "shared" / "datasets"
    if not root.is_dir():
        pytest.skip(f"../shared not found: {root} holds the Caltech-101 and hymenoptera datasets")
    return root


@pytest.mark.integration
def test_caltech_101_97_has_97_classes_and_6209_images_split_70_15_15(shared_datasets):
    dataset = load_dataset(shared_datasets / "caltech101" / "101_ObjectCategories", exclude=CALTECH_EXCLUDED)
    assert dataset.layout == "folders" and len(dataset.classes) == 97
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (4347, 931, 931)
    assert dataset.skipped == []
    assert min(n["test"] for n in dataset.class_counts().values()) >= 4  # stratified: even 31-image classes


@pytest.mark.integration
def test_caltech_split_lists_layout(shared_datasets):
    dataset = load_dataset(shared_datasets / "caltech101")
    assert dataset.layout == "lists" and len(dataset.classes) == 102
    assert len(dataset.test) == 3049
    assert len(dataset.train) + len(dataset.validation) == 6096 - 1  # BACKGROUND_Google/tmp has no image extension
    assert dataset.skipped == [Skipped(str(shared_datasets / "caltech101/101_ObjectCategories/BACKGROUND_Google/tmp"),
                                       "unsupported extension (none)")]


@pytest.mark.integration
def test_hymenoptera_presplit_uses_val_as_validation_and_test(shared_datasets):
    root = shared_datasets / "hymenoptera"
    dataset = load_dataset(root)
    assert dataset.layout == "presplit" and dataset.classes == ["ants", "bees"]
    assert dataset.test_is_validation and dataset.test.paths == dataset.validation.paths
    assert (len(dataset.train), len(dataset.validation)) == (245, 153)
    placeholder = root / "train" / "ants" / "imageNotFound.gif"
    assert placeholder in dataset.train.paths and dataset.skipped == []  # a real GIF, just not an ant
    assert open_image(placeholder).size == (300, 300)
    assert open_image(root / "train" / "ants" / "formica.jpeg").mode == "RGB"


def test_extremely_elongated_image_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (5000, 10)).save(path)
    with pytest.raises(ImageDecodeError, match="elongated"):
        open_image(path)
