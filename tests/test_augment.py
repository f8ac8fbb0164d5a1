"""Tests for transferlab.data.augment on small generated images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.core.errors import TransferlabError
from transferlab.data.augment import (
    AugmentConfig,
    FeaturewiseStandardizer,
    TransformParams,
    apply_transform,
    augment_image,
    sample_transform,
)
from transferlab.data.previews import (
    PREVIEW_INPUT,
    featurewise_preview,
    preview_grid,
    save_augmented,
    training_view,
)

SEEDS = range(24)


def square_image(size: int = 32, top: int = 12, left: int = 12, side: int = 8) -> Image.Image:
    """A white square on black."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[top : top + side, left : left + side] = 255
    return Image.fromarray(pixels)


def noise_image(width: int = 24, height: int = 20, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def only(**options) -> AugmentConfig:
    """A config with everything off except `options`."""
    return dataclasses.replace(AugmentConfig.none(), **options)


def bright_box(image: Image.Image) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) inclusive bounds of pixels brighter than half."""
    rows, cols = np.nonzero(np.asarray(image)[..., 0] > 127)
    return rows.min(), cols.min(), rows.max(), cols.max()


@pytest.mark.parametrize("option, mirror", [("horizontal_flip", np.fliplr), ("vertical_flip", np.flipud)])
def test_flip_mirrors_the_image_on_some_seeds_and_not_others(option, mirror):
    image = noise_image()
    original = np.asarray(image)
    outputs = [np.asarray(augment_image(image, only(**{option: True}), seed)) for seed in SEEDS]
    flipped = [np.array_equal(out, mirror(original)) for out in outputs]
    unchanged = [np.array_equal(out, original) for out in outputs]
    assert all(f or u for f, u in zip(flipped, unchanged))
    assert any(flipped) and any(unchanged)


@pytest.mark.parametrize("translate, rows, cols", [((5.0, 0.0), 0, 5), ((0.0, -3.0), -3, 0)])
def test_shift_moves_square_by_translate_pixels(translate, rows, cols):
    shifted = apply_transform(square_image(), TransformParams(translate=translate), fill_mode="constant")
    assert bright_box(shifted) == (12 + rows, 12 + cols, 19 + rows, 19 + cols)


def test_shift_ranges_are_fractions_below_one_and_pixels_from_one():
    fraction = only(width_shift_range=0.25, height_shift_range=0.1)
    pixels = only(width_shift_range=3.0, height_shift_range=0.0)
    fraction_shifts, pixel_shifts = (
        np.array([sample_transform(config, (40, 20), np.random.default_rng(s)).translate for s in SEEDS])
        for config in (fraction, pixels)
    )
    assert np.all(np.abs(fraction_shifts).max(axis=0) <= [10.0, 2.0])
    assert np.abs(fraction_shifts).max(axis=0)[0] > 5.0
    assert np.abs(pixel_shifts[:, 0]).max() <= 3.0 and np.all(pixel_shifts[:, 1] == 0)


def test_rotation_turns_the_image_counter_clockwise_like_pil():
    image = noise_image(width=20, height=20)
    rotated = apply_transform(image, TransformParams(angle=90.0))
    assert np.array_equal(np.asarray(rotated), np.asarray(image.rotate(90)))


def test_sampled_rotation_stays_within_rotation_range():
    angles = [sample_transform(only(rotation_range=15.0), (8, 8), np.random.default_rng(s)).angle for s in SEEDS]
    assert max(abs(a) for a in angles) <= 15.0
    assert min(angles) < -5.0 and max(angles) > 5.0


def test_zoom_scales_content_about_the_centre():
    zoomed = apply_transform(square_image(), TransformParams(scale=2.0), fill_mode="constant")
    top, left, bottom, right = bright_box(zoomed)
    assert (bottom - top + 1, right - left + 1) == (16, 16)
    assert (top + bottom) / 2 == pytest.approx(15.5, abs=0.5)


def test_zoom_range_follows_keras_where_factors_below_one_zoom_in():
    assert only(zoom_range=0.25).zoom_range == (0.75, 1.25)
    scales = [sample_transform(only(zoom_range=(0.5, 0.8)), (8, 8), np.random.default_rng(s)).scale for s in SEEDS]
    assert min(scales) >= 1.25 and max(scales) <= 2.0


def test_shear_slants_the_square():
    sheared = apply_transform(square_image(), TransformParams(shear=30.0), fill_mode="constant")
    bright = np.asarray(sheared)[..., 0] > 127
    top, _, bottom, _ = bright_box(sheared)
    top_centre, bottom_centre = (np.nonzero(bright[row])[0].mean() for row in (top, bottom))
    assert (top, bottom) == (12, 19)
    assert abs(top_centre - bottom_centre) == pytest.approx(np.tan(np.radians(30)) * 7, abs=1.0)


def test_brightness_scales_mean_intensity_within_range():
    image = Image.fromarray(np.full((16, 16, 3), 100, np.uint8))
    config = only(brightness_range=(0.5, 1.5))
    ratios = [np.asarray(augment_image(image, config, s)).mean() / 100 for s in SEEDS]
    assert min(ratios) >= 0.49 and max(ratios) <= 1.51
    assert max(ratios) - min(ratios) > 0.3


@pytest.mark.parametrize(
    "fill_mode, expected_border",
    [
        ("nearest", lambda a, k: np.repeat(a[:, :1], k, axis=1)),  # aaaa|abcd
        ("wrap", lambda a, k: a[:, -k:]),  # abcd|abcd
        ("reflect", lambda a, k: a[:, k - 1 :: -1]),  # dcba|abcd
        ("constant", lambda a, k: np.full_like(a[:, :k], 7)),  # cval
    ],
)
def test_fill_mode_fills_the_uncovered_border_as_keras(fill_mode, expected_border):
    image = noise_image()
    original = np.asarray(image)
    shifted = np.asarray(apply_transform(image, TransformParams(translate=(4.0, 0.0)), fill_mode=fill_mode, cval=7.0))
    assert np.array_equal(shifted[:, :4], expected_border(original, 4))
    assert np.array_equal(shifted[:, 4:], original[:, :-4])


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "wrap"])
def test_strong_transforms_leave_no_pixel_unfilled(fill_mode):
    white = Image.fromarray(np.full((30, 50, 3), 255, np.uint8))
    params = TransformParams(angle=135.0, translate=(-40.0, 25.0), scale=0.3, shear=60.0)
    assert np.asarray(apply_transform(white, params, fill_mode=fill_mode)).min() == 255


def test_same_seed_gives_identical_output():
    image, config = noise_image(), AugmentConfig(brightness_range=(0.8, 1.2), vertical_flip=True)
    assert np.array_equal(np.asarray(augment_image(image, config, 7)), np.asarray(augment_image(image, config, 7)))


def test_different_seeds_give_different_outputs():
    image, config = noise_image(), AugmentConfig()
    outputs = {np.asarray(augment_image(image, config, s)).tobytes() for s in range(5)}
    assert len(outputs) == 5


def test_augmentation_does_not_touch_global_rng_state():
    np.random.seed(1)
    torch_state = torch.random.get_rng_state()
    expected = np.random.random()
    np.random.seed(1)
    augment_image(noise_image(), AugmentConfig(), 3)
    assert np.random.random() == expected
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_none_config_returns_identical_pixels():
    image = noise_image()
    assert np.array_equal(np.asarray(augment_image(image, AugmentConfig.none(), 0)), np.asarray(image))


def test_presets_by_name():
    assert AugmentConfig.preset("notebook") == AugmentConfig()
    assert AugmentConfig.preset("light") == AugmentConfig.light()
    assert AugmentConfig.preset("none") == AugmentConfig.none()
    assert AugmentConfig.preset("light-noflip") == dataclasses.replace(AugmentConfig.light(), horizontal_flip=False)
    with pytest.raises(TransferlabError, match="unknown augmentation") as raised:
        AugmentConfig.preset("heavy")
    assert "notebook, light, light-noflip, none" in raised.value.hint


def test_light_config_varies_views_and_keeps_size():
    image = noise_image()
    views = [augment_image(image, AugmentConfig.light(), s) for s in range(4)]
    assert all(view.size == image.size and view.mode == "RGB" for view in views)
    assert len({np.asarray(view).tobytes() for view in views}) == 4


def test_key_is_stable_and_changes_with_every_parameter():
    base = AugmentConfig()
    assert base.key() == AugmentConfig().key()
    changed = {
        "rotation_range": 10.0,
        "width_shift_range": 0.1,
        "height_shift_range": 0.1,
        "shear_range": 5.0,
        "zoom_range": 0.1,
        "horizontal_flip": False,
        "vertical_flip": True,
        "brightness_range": (0.9, 1.1),
        "fill_mode": "wrap",
        "cval": 3.0,
        "featurewise_center": True,
        "featurewise_std_normalization": True,
        "zca_whitening": True,
        "zca_epsilon": 1e-3,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(AugmentConfig)}
    keys = {AugmentConfig(**{name: value}).key() for name, value in changed.items()}
    assert len(keys) == len(changed) and base.key() not in keys


def test_equivalent_spellings_share_a_key():
    assert AugmentConfig(zoom_range=0.2, rotation_range=40).key() == AugmentConfig(zoom_range=[0.8, 1.2]).key()


@pytest.mark.parametrize(
    "options",
    [
        {"rotation_range": -1.0},
        {"width_shift_range": -0.1},
        {"height_shift_range": float("nan")},
        {"shear_range": 90.0},
        {"zoom_range": 1.0},
        {"zoom_range": (1.2, 0.8)},
        {"zoom_range": (0.0, 1.0)},
        {"brightness_range": (1.5,)},
        {"fill_mode": "mirror"},
        {"cval": 300.0},
        {"horizontal_flip": "yes"},
        {"zca_epsilon": 0.0},
    ],
)
def test_invalid_parameters_raise_transferlab_error(options):
    with pytest.raises(TransferlabError) as error:
        AugmentConfig(**options)
    assert next(iter(options)) in error.value.message and error.value.hint


def test_zca_whitening_makes_covariance_identity():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(12, 12))
    images = (rng.normal(size=(4000, 12)) @ mixing + 5.0).reshape(-1, 2, 2, 3).astype(np.float32)
    whitened = FeaturewiseStandardizer(zca_whitening=True).fit(images).transform(images).reshape(len(images), -1)
    assert np.abs(np.cov(whitened, rowvar=False, bias=True) - np.eye(12)).max() < 0.05


def test_featurewise_center_gives_zero_channel_means():
    images = np.random.default_rng(0).normal([10.0, -3.0, 50.0], [1.0, 2.0, 3.0], size=(64, 4, 4, 3))
    centred = FeaturewiseStandardizer(center=True).fit(images).transform(images)
    assert np.abs(centred.mean(axis=(0, 1, 2))).max() < 1e-4


def test_featurewise_std_normalization_gives_unit_channel_std():
    images = np.random.default_rng(0).normal([10.0, -3.0, 50.0], [1.0, 2.0, 30.0], size=(64, 4, 4, 3))
    scaled = FeaturewiseStandardizer(center=True, std_normalization=True).fit(images).transform(images)
    assert np.allclose(scaled.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_standardizer_is_built_from_config_flags():
    config = AugmentConfig(featurewise_center=True, zca_whitening=True, zca_epsilon=1e-3)
    standardizer = FeaturewiseStandardizer.from_config(config)
    assert (standardizer.center, standardizer.std_normalization, standardizer.zca_whitening) == (True, False, True)
    assert standardizer.epsilon == 1e-3


def test_standardizer_misuse_raises_transferlab_error():
    images = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(TransferlabError, match="before fit"):
        FeaturewiseStandardizer().transform(images)
    with pytest.raises(TransferlabError, match="fitted on"):
        FeaturewiseStandardizer().fit(images).transform(np.zeros((2, 5, 4, 3), np.float32))
    with pytest.raises(TransferlabError, match="ZCA"):
        FeaturewiseStandardizer(zca_whitening=True).fit(np.zeros((2, 100, 100, 3), np.float32))


def test_preview_grid_writes_png_of_expected_size(tmp_path):
    path = tmp_path / "preview" / "grid.png"
    grid = preview_grid(noise_image(width=30, height=20), AugmentConfig(), n=8, seed=0, path=path)
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        assert saved.size == grid.size == (3 * PREVIEW_INPUT, 3 * (PREVIEW_INPUT + 16))  # 9 training inputs -> 3 x 3


def test_preview_grid_shows_the_unaugmented_training_input_first():
    image = noise_image(width=30, height=20)
    grid = np.asarray(preview_grid(image, AugmentConfig(), n=3))
    original = training_view(image, AugmentConfig.none(), 0)
    assert np.array_equal(grid[: original.height, : original.width], np.asarray(original))


def test_save_augmented_writes_n_files_with_prefix_and_format(tmp_path):
    paths = save_augmented(noise_image(), AugmentConfig(), 3, tmp_path / "out", prefix="cat", format="png", seed=5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat_0_5.png", "cat_1_6.png", "cat_2_7.png"]
    assert paths == sorted(paths)
    with Image.open(paths[0]) as first:
        assert first.format == "PNG"
        assert np.array_equal(np.asarray(first), np.asarray(augment_image(noise_image(), AugmentConfig(), 5)))


def test_save_augmented_rejects_unknown_format(tmp_path):
    with pytest.raises(TransferlabError, match="format"):
        save_augmented(noise_image(), AugmentConfig(), 1, tmp_path, format="xyz")


def test_featurewise_preview_shows_whitened_images():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(6)]
    config = AugmentConfig(featurewise_center=True, zca_whitening=True, zca_epsilon=1e-2)
    previews = featurewise_preview(images, config, size=16)
    assert len(previews) == 6 and all(p.size == (16, 16) and p.mode == "RGB" for p in previews)
    assert all(np.asarray(p).min() == 0 and np.asarray(p).max() == 255 for p in previews)  # stretched to be seen
    with pytest.raises(TransferlabError, match="no featurewise option"):
        featurewise_preview(images, AugmentConfig.light())
