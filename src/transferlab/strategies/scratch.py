"""Training from random initialisation: the notebooks' baseline that transfer learning is measured against.

By default the network is `small_cnn` (4 x conv32 3x3 + ReLU + max-pool, dropout 0.25 after every second
pair, at 128 px) with the `mlp` head (Dense 256 + dropout 0.5 + softmax); any registered backbone can be
trained from random init instead. Training images are decoded once and augmented on the fly in every batch
(the notebooks' ImageDataGenerator settings unless `augment` says otherwise; AugmentConfig.none() turns it off).
"""

from __future__ import annotations

import torch

from transferlab.augment import AugmentConfig
from transferlab.backbones import create_backbone
from transferlab.classifier import Classifier
from transferlab.data import DatasetSplit
from transferlab.features import FeatureExtractor, Trunk
from transferlab.heads import HeadConfig, build_head
from transferlab.strategies.augment import CHANNELS_LAST, ImageBatches, augment_config, decode_images
from transferlab.strategies.base import StrategyResult, TrainOptions, training_device
from transferlab.training import fit

DEFAULT_BACKBONE = "small_cnn"
# A network trained from random weights needs many small steps (the notebooks: batch 20-32).
BATCH_SIZE = 32
LR = 3e-4


def train(split: DatasetSplit, options: TrainOptions) -> StrategyResult:
    # Only its preprocessing is used: decoding at the network's own input size (no trunk is ever built here).
    decoder = FeatureExtractor(options.backbone, pretrained=False, cache_dir=options.cache_dir, quiet=True)
    train_images, train_failed = decode_images(decoder, split.train.paths, "decoding: train", options.quiet)
    val_images, val_failed = decode_images(decoder, split.val.paths, "decoding: validation", options.quiet)
    failed = {**train_failed, **val_failed}
    split = split.without(failed) if failed else split

    torch.manual_seed(options.fit.seed)
    model = create_backbone(options.backbone, pretrained=False)
    trunk = Trunk(model, decoder.spec.mean, decoder.spec.std)
    head_config = HeadConfig(
        options.head, feature_size(trunk, decoder.spec.input_size), len(split.classes), options.hidden, options.dropout
    )
    head = build_head(head_config)
    history = fit(
        torch.nn.Sequential(trunk, head).to(memory_format=CHANNELS_LAST),
        (torch.arange(len(split.train)), torch.from_numpy(split.train.labels)),
        (val_images, torch.from_numpy(split.val.labels)),
        options.fit,
        n_classes=len(split.classes),
        batch_transform=ImageBatches(train_images, augmentation(options)),
        device=training_device(options),
        quiet=options.quiet,
        log_epochs=options.log_epochs,
        description=f"training {options.backbone} from scratch",
    )
    classifier = Classifier(
        backbone=options.backbone,
        classes=split.classes,
        head=head,
        head_config=head_config,
        pretrained=False,
        backbone_state={key: value.detach().clone() for key, value in model.state_dict().items()},
        strategy="scratch",
        cache_dir=options.cache_dir,
    )
    return StrategyResult(
        classifier=classifier,
        history=history,
        split=split,
        train_seconds=history.seconds,
        extra={"augment_key": augmentation(options).key()},
    )


def augmentation(options: TrainOptions) -> AugmentConfig:
    """The user's, or the notebooks' ImageDataGenerator settings: a network learning from nothing needs
    strong augmentation on small data."""
    return augment_config(options, default=AugmentConfig())


def feature_size(trunk: Trunk, input_size: int) -> int:
    """Width of the trunk's output, found by running it once (pre-logits widths vary by architecture)."""
    with torch.inference_mode():
        return trunk.eval()(torch.zeros((1, 3, input_size, input_size), dtype=torch.uint8)).shape[1]
