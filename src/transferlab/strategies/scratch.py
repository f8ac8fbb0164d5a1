"""Training from random initialisation: the notebooks' baseline that transfer learning is measured against.

A recipe (options.SCRATCH_RECIPES) fixes network, input size, batch size, learning rate, epochs and augmentation;
"lesson" is the transfer-learning lesson's baseline (`small_cnn_224`: 4 x conv32 3x3 + ReLU + max-pool, dropout
0.25 after every second pair, at 224 px, with the `mlp` head: Dense 256 + dropout 0.5 + softmax). Any registered
backbone can be trained from random init instead. Training images are decoded once and augmented on the fly in
every batch (the recipe's preset unless `augment` says otherwise; AugmentConfig.none() turns it off).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from transferlab.backbones.registry import create_backbone, keras_init
from transferlab.backbones.trunk import Trunk
from transferlab.core.config import scratch_recipe
from transferlab.core.device import device_of
from transferlab.core.errors import TransferlabError
from transferlab.data.augment import AugmentConfig, FeaturewiseStandardizer
from transferlab.data.dataset import DatasetSplit
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import fit
from transferlab.strategies.augment import augment_config
from transferlab.strategies.base import (
    Trained,
    TrainOptions,
    make_extractor,
    training_device,
)
from transferlab.strategies.inputs import CHANNELS_LAST, ImageBatches, decode_once


def train_from_scratch(split: DatasetSplit, options: TrainOptions) -> Trained:
    # Only its preprocessing is used: decoding at the network's own input size (no trunk is ever built here).
    decoder = make_extractor(options, pretrained=False)
    device, size = training_device(options), decoder.spec.input_size
    train_store = decode_once(decoder, split.train.paths, "decoding: train", device, options.quiet)
    val_store = decode_once(decoder, split.validation.paths, "decoding: validation", device, options.quiet)
    failed = {**train_store.failed, **val_store.failed}
    split = split.without(failed) if failed else split

    normalization = featurewise_normalization(train_store.centre(size), augmentation(options), decoder)
    torch.manual_seed(options.fit.seed)
    model = create_backbone(options.backbone, pretrained=False)
    trunk = Trunk(model, *(normalization or (decoder.mean, decoder.std)))
    head_config = HeadConfig(
        options.head, feature_size(trunk, decoder.spec.input_size), len(split.classes), options.hidden, options.dropout
    )
    head = keras_init(build_head(head_config))  # the lessons' Dense layers, initialised as Keras does
    history = fit(
        torch.nn.Sequential(trunk, head).to(memory_format=CHANNELS_LAST),
        (torch.arange(len(split.train)), torch.from_numpy(split.train.labels)),
        (val_store.centre(size), torch.from_numpy(split.validation.labels)),
        options.fit,
        n_classes=len(split.classes),
        batch_transform=ImageBatches(train_store, augmentation(options), size, device),
        device=device,
        quiet=options.quiet,
        log_epochs=options.log_epochs,
        description=f"training {options.backbone} from scratch",
    )
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    trained_extractor = make_extractor(options, pretrained=False, backbone_state=state, normalization=normalization)
    extra = {"augment_key": augmentation(options).key(), "recipe": scratch_recipe(options.recipe).name}
    return Trained(trained_extractor, head, head_config, history, split, extra=extra)


def augmentation(options: TrainOptions) -> AugmentConfig:
    """The user's, or the recipe's preset (with its featurewise standardisation)."""
    recipe = scratch_recipe(options.recipe)
    preset = AugmentConfig.preset(recipe.augment)
    if recipe.featurewise:
        preset = dataclasses.replace(preset, featurewise_center=True, featurewise_std_normalization=True)
    return augment_config(options, default=preset)


def featurewise_normalization(
    images: torch.Tensor, config: AugmentConfig, decoder: FeatureExtractor
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Keras' featurewise_center / featurewise_std_normalization as the network's input normalisation: the
    per-channel mean and std of the training images (pixels scaled to 0..1), saved with the model, so that
    prediction and the ONNX export apply them too. None when neither is asked for."""
    size = decoder.spec.input_size
    if config.zca_whitening and 3 * size * size > FeaturewiseStandardizer.MAX_ZCA_FEATURES:
        raise TransferlabError(
            f"ZCA whitening needs images of at most {FeaturewiseStandardizer.MAX_ZCA_FEATURES} values; "
            f"{decoder.spec.name} trains at {size}x{size}x3",
            hint="turn zca_whitening off (featurewise_center / featurewise_std_normalization work at any size)",
        )
    if not (config.featurewise_center or config.featurewise_std_normalization):
        return None
    mean, std = channel_statistics(images)
    return (
        tuple(mean) if config.featurewise_center else decoder.mean,
        tuple(std + FeaturewiseStandardizer.STD_GUARD) if config.featurewise_std_normalization else decoder.std,
    )


def channel_statistics(images: torch.Tensor, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 NCHW images, scaled to 0..1, accumulated in chunks (a
    float copy of a whole training set would take gigabytes)."""
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].double() / 255.0
        total += pixels.sum(dim=(0, 2, 3)).cpu().numpy()
        squares += (pixels * pixels).sum(dim=(0, 2, 3)).cpu().numpy()
        count += pixels.numel() // 3
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))


def feature_size(trunk: Trunk, input_size: int) -> int:
    """Width of the trunk's output, found by running it once (pre-logits widths vary by architecture)."""
    with torch.inference_mode():
        probe = torch.zeros((1, 3, input_size, input_size), dtype=torch.uint8, device=device_of(trunk))
        return trunk.eval()(probe).shape[1]
