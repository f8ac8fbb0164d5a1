"""The decode-once store and the batched, on-device augmentation of the end-to-end paths (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_colour_images
from transferlab.data import store as store_module
from transferlab.data.augment import AugmentConfig, TransformParams, apply_transform, sample_transform
from transferlab.data.batch_augment import augment_batch, sample_batch_params, sampling_matrices
from transferlab.data.decoding import resize_and_crop, open_image
from transferlab.data.store import decode_store


def gradient_image(size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8)


@pytest.fixture
def photos(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        paths += write_colour_images(tmp_path / f"c{i}", colour, 4, size=40 + 8 * i, seed=i)
    return paths


def counting_decoder(monkeypatch) -> list:
    calls = []

    def counted(path, *args, **kwargs):
        calls.append(path)
        return open_image(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "open_image", counted)
    return calls


def test_store_decodes_each_file_once_and_batches_index_it(photos, monkeypatch):
    calls = counting_decoder(monkeypatch)
    store = decode_store(photos, 36, "bicubic")
    indices = torch.tensor([3, 0, 7, 7])
    expected = [resize_and_crop(open_image(photos[i], draft_size=(36, 36)), 36, 36, "bicubic") for i in indices]
    assert sorted(calls) == sorted(photos)
    assert torch.equal(store.batch(indices), torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2))


def test_store_above_its_memory_limit_spills_to_a_mapped_file_with_identical_batches(photos):
    in_ram = decode_store(photos, 32, "bilinear")
    spilled = decode_store(photos, 32, "bilinear", memory_limit=1000)
    assert spilled.spilled and not in_ram.spilled
    indices = torch.randperm(len(photos))
    assert torch.equal(spilled.batch(indices), in_ram.batch(indices))
    assert torch.equal(spilled.centre(24), in_ram.centre(24))


def test_store_leaves_out_files_that_do_not_decode(photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    store = decode_store([photos[0], broken, photos[1]], 32, "bilinear")
    assert list(store.failed) == [broken] and len(store) == 2
    assert torch.equal(store.batch(torch.tensor([1])), decode_store([photos[1]], 32, "bilinear").batch(torch.tensor([0])))


def test_store_centre_crop_is_the_extractors_input(photos):
    image = open_image(photos[-1], draft_size=(40, 40))
    assert torch.equal(decode_store(photos[-1:], 40, "bicubic").centre(32)[0],
                       torch.from_numpy(resize_and_crop(image, 40, 32, "bicubic")).permute(2, 0, 1))


@pytest.mark.parametrize("params", [
    TransformParams(angle=30), TransformParams(translate=(5, -3)), TransformParams(scale=1.25),
    TransformParams(shear=20), TransformParams(horizontal_flip=True),
    TransformParams(angle=20, translate=(4, 2), scale=1.2, shear=10, vertical_flip=True),
])
def test_batched_transform_draws_the_same_picture_as_the_per_image_one(params):
    image = gradient_image()
    expected = np.asarray(apply_transform(Image.fromarray(image), params)).astype(float)
    draw = {"angle": torch.tensor([params.angle]), "shift": torch.tensor([params.translate]),
            "shear": torch.tensor([params.shear]), "zoom": torch.tensor([1 / params.scale]),
            "horizontal_flip": torch.tensor([params.horizontal_flip]),
            "vertical_flip": torch.tensor([params.vertical_flip])}
    grid = torch.nn.functional.affine_grid(sampling_matrices(draw, 64, 64), [1, 3, 64, 64], align_corners=False)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    got = torch.nn.functional.grid_sample(pixels, grid, padding_mode="border", align_corners=False)
    interior = (slice(12, 52), slice(12, 52))  # the fill at the edges is Keras' padding, not compared
    assert np.abs(got[0].permute(1, 2, 0).numpy() - expected)[interior].mean() < 1.0


@pytest.mark.parametrize("preset", ["notebook", "light"])
def test_batched_draws_have_the_per_image_distribution_of_crops_and_flips(preset):
    config, n = AugmentConfig.preset(preset), 4000
    batched = sample_batch_params(config, n, 224, torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    single = [sample_transform(config, (224, 224), rng) for _ in range(n)]
    assert abs(batched["horizontal_flip"].float().mean() - np.mean([p.horizontal_flip for p in single])) < 0.04
    assert abs(batched["zoom"].mean() - np.mean([1 / p.scale for p in single])) < 0.01
    assert abs(batched["shift"][:, 0].abs().mean() - np.mean([abs(p.translate[0]) for p in single])) < 1.0
    assert abs(batched["angle"].abs().mean() - np.mean([abs(p.angle) for p in single])) < 1.0


def test_batched_augmentation_repeats_exactly_for_the_same_seed():
    images = torch.from_numpy(gradient_image(72)).permute(2, 0, 1)[None].repeat(6, 1, 1, 1)
    config = AugmentConfig.preset("notebook")
    first = augment_batch(images, config, 64, torch.Generator().manual_seed(3))
    again = augment_batch(images, config, 64, torch.Generator().manual_seed(3))
    other = augment_batch(images, config, 64, torch.Generator().manual_seed(4))
    assert first.shape == (6, 3, 64, 64) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_flips_alone_mirror_the_centre_crop_about_half_the_time():
    images = torch.from_numpy(gradient_image(72)).permute(2, 0, 1)[None].repeat(400, 1, 1, 1)
    config = AugmentConfig(rotation_range=0, width_shift_range=0, height_shift_range=0, shear_range=0, zoom_range=0)
    out = augment_batch(images, config, 64, torch.Generator().manual_seed(0))
    centre = images[:1, :, 4:68, 4:68]
    plain, mirrored = (out == centre).flatten(1).all(1), (out == centre.flip(-1)).flatten(1).all(1)
    assert bool((plain | mirrored).all()) and 0.4 < mirrored.float().mean() < 0.6


def test_no_augmentation_gives_the_centre_crop():
    images = torch.from_numpy(gradient_image(72)).permute(2, 0, 1)[None]
    out = augment_batch(images, AugmentConfig.none(), 64, torch.Generator())
    assert torch.equal(out, images[:, :, 4:68, 4:68])


@pytest.mark.parametrize("preset", ["notebook", "light"])
def test_augment_preview_shows_exactly_what_training_sees(photos, preset):
    from transferlab.data.previews import PREVIEW_INPUT, PREVIEW_INTERPOLATION, PREVIEW_STORED, preview_variants
    from transferlab.strategies.inputs import ImageBatches

    config = AugmentConfig.preset(preset)
    store = decode_store(photos[:1], PREVIEW_STORED, PREVIEW_INTERPOLATION)
    training = ImageBatches(store, config, PREVIEW_INPUT)(torch.tensor([0]), torch.Generator().manual_seed(11))
    (_, original), (_, preview) = preview_variants(open_image(photos[0]), config, n=1, seed=11)
    assert np.array_equal(np.asarray(preview), training[0].permute(1, 2, 0).numpy())
    assert np.array_equal(np.asarray(original), store.centre(PREVIEW_INPUT)[0].permute(1, 2, 0).numpy())


def test_scratch_decodes_each_training_and_validation_file_once(tmp_path, monkeypatch):
    import transferlab.strategies.scratch as scratch
    from conftest import write_colour_classes
    from transferlab.core.config import FitConfig, TrainOptions
    from transferlab.data.dataset import load_dataset

    calls = counting_decoder(monkeypatch)
    split = load_dataset(write_colour_classes(tmp_path / "colours", 3))
    options = TrainOptions(fit=FitConfig(epochs=1).resolved("scratch"), quiet=True)
    scratch.train_from_scratch(split, options)
    assert sorted(calls) == sorted([*split.train.paths, *split.validation.paths])
