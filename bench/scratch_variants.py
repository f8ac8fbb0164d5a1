"""Short from-scratch experiments on Caltech-101/97 (same split as bench/caltech.py): which settings make the
small convnet learn in few epochs. Images are decoded once per input size (cached under --cache), then every
variant trains the same way `--strategy scratch` does (transferlab's Trunk, mlp head, fit, ImageBatches).

    .venv/bin/python bench/scratch_variants.py --backbone small_cnn --epochs 3 \
        --variant notebook,32,3e-4 --variant none,32,2e-3,one-cycle [--featurewise center,std]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import CALTECH_EXCLUDED, require_caltech

from transferlab.backbones.registry import create_backbone, keras_init
from transferlab.backbones.trunk import Trunk
from transferlab.core.config import FitConfig
from transferlab.data.augment import AugmentConfig
from transferlab.data.dataset import load_dataset
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import fit, predict_logits
from transferlab.strategies.inputs import CHANNELS_LAST, ImageBatches, decode_images
from transferlab.strategies.scratch import feature_size, featurewise_normalization


def decoded(extractor: FeatureExtractor, split, cache: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    path = cache / f"caltech97-{extractor.spec.name}.pt"
    if not path.exists():
        subsets = {}
        for name, subset in split.subsets().items():
            images, failed = decode_images(extractor, subset.paths, name, quiet=True)
            assert not failed, failed
            subsets[name] = (images, torch.from_numpy(subset.labels))
        torch.save(subsets, path)
    return torch.load(path)


def run(backbone: str, data: dict, n_classes: int, augment: str, batch: int, lr: float, schedule: str, epochs: int,
        featurewise: set):
    extractor = FeatureExtractor(backbone, pretrained=False, quiet=True)
    standardise = AugmentConfig(featurewise_center="center" in featurewise,
                                featurewise_std_normalization="std" in featurewise)
    normalization = featurewise_normalization(data["train"][0], standardise, extractor)  # as --strategy scratch
    torch.manual_seed(0)
    trunk = Trunk(create_backbone(backbone, pretrained=False), *(normalization or (extractor.mean, extractor.std)))
    head = keras_init(build_head(HeadConfig("mlp", feature_size(trunk, extractor.spec.input_size), n_classes, 256, 0.5)))
    model = torch.nn.Sequential(trunk, head).to(memory_format=CHANNELS_LAST)
    images, labels = data["train"]
    start = time.perf_counter()
    history = fit(model, (torch.arange(len(labels)), labels), data["validation"],
                  FitConfig(epochs=epochs, batch_size=batch, lr=lr, patience=None, schedule=schedule), n_classes=n_classes,
                  batch_transform=ImageBatches(images, AugmentConfig.preset(augment)), quiet=True, log_epochs=True)
    seconds = time.perf_counter() - start
    test = (predict_logits(model.eval(), data["test"][0]).argmax(1) == data["test"][1]).float().mean().item()
    vals = " ".join(f"{row['val_accuracy']:.3f}" for row in history.epochs)
    print(f"{backbone} aug={augment} batch={batch} lr={lr} schedule={schedule} featurewise={sorted(featurewise) or '-'} epochs={epochs}: "
          f"test {test:.2%}, val by epoch [{vals}], {seconds:.0f} s ({seconds / epochs:.1f} s/epoch)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variant", action="append", required=True, help="augment preset,batch,lr[,schedule]")
    parser.add_argument("--featurewise", default="", help="comma list of center,std")
    parser.add_argument("--cache", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    split = load_dataset(require_caltech(), exclude=CALTECH_EXCLUDED.split(","), seed=0)
    data = decoded(FeatureExtractor(args.backbone, pretrained=False, quiet=True), split, args.cache)
    featurewise = set(filter(None, args.featurewise.split(",")))
    for variant in args.variant:
        augment, batch, lr, schedule = (variant.split(",") + ["constant"])[:4]
        run(args.backbone, data, len(split.classes), augment, int(batch), float(lr), schedule, args.epochs, featurewise)


if __name__ == "__main__":
    main()
