"""How much of a Caltech-101/97 result is the head's seed, and does anything done to the frozen features add to it?

    TRANSFERLAB_CACHE=DIR .venv/bin/python bench/head_variance.py RUN [--seeds 5] [--work DIR]
        [--combinations all3 lite1 ...] [--variants final mirror ...]

RUN is a finished `transferlab train` run on Caltech-101/97 (bench/caltech.py's split; its split.csv is reused)
whose cache DIR holds the embedded backbones' features (a run with --backbone
efficientnet_lite0+efficientnet_lite1+efficientnet_lite2 fills it; the variants that need other features compute
them once and cache them there too). Every variant trains the product's linear head (`heads.build_head`,
`training.fit`: Adam 1e-3, batch 256, 50 epochs, early stopping on validation loss) once per seed on the same
split, and reports validation and test accuracy per seed, their mean, and the accuracy of the seeds' averaged
probabilities. Variants:
- final: the pooled features each backbone gives by default (what `--head linear` trains on);
- mirror: training on the original and the mirrored image, and test-time averaging over both (mirrored features
  are computed here, once, and kept in --work);
- stages: the final features plus the pooled outputs of the last two stages (`--layer 4`, `--layer 3`);
- stages-standardised: the same, each feature standardised on the training set first;
- standardised, sqrt-l2: the final features standardised, or square-rooted and L2-normalised per backbone;
- 288px-averaged: each backbone's features at its own input size averaged with those at 288 px (two scales);
- refit: after the usual fit, a second head trained on training + validation images for the first one's best
  epoch count (validation accuracy is then not a held-out estimate; the test set stays untouched);
- late-fusion: one head per backbone, their log-probabilities summed (instead of one head on concatenated features).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from common import require_caltech

from transferlab.core.config import FitConfig
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import fit

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SUBSETS = ("train", "validation", "test")
COMBINATIONS = {"all3": BACKBONES, "lite1": ("efficientnet_lite1",), "lite1+lite2": BACKBONES[1:]}
LARGER_SIZE = 288


def split_of(run: Path, data: Path) -> tuple[dict[str, list[Path]], dict[str, torch.Tensor]]:
    rows = list(csv.DictReader((run / "split.csv").open()))
    classes = sorted({r["class"] for r in rows})
    paths = {s: [data / r["path"] for r in rows if r["split"] == s] for s in SUBSETS}
    labels = {s: torch.tensor([classes.index(r["class"]) for r in rows if r["split"] == s]) for s in SUBSETS}
    return paths, labels


def mirrored(extractor: FeatureExtractor, paths: list[Path], stored: Path) -> np.ndarray:
    """Features of the mirrored images (the same decoding and crop as the cached originals, then a flip)."""
    if not stored.exists():
        batches = [np.stack([extractor.prepare(p) for p in paths[i : i + 32]]) for i in range(0, len(paths), 32)]
        np.save(stored, np.concatenate([extractor.run_batch(b[:, :, ::-1]) for b in batches]))
    return np.load(stored)


class FeatureTable:
    """(backbone, subset, view) -> float32 features, computed or read from the cache on first use; view None is
    the default features, 4 / 3 the stages, "mirror" the flip, LARGER_SIZE the larger input."""

    def __init__(self, paths: dict[str, list[Path]], work: Path):
        self.paths, self.work, self.table = paths, work, {}

    def __call__(self, backbone: str, subset: str, view=None) -> np.ndarray:
        if (backbone, subset, view) not in self.table:
            if view == "mirror":
                extractor = FeatureExtractor(backbone, quiet=True)
                stored = self.work / f"{backbone}_{subset}_mirror.npy"
                features = mirrored(extractor, self.paths[subset], stored)
            else:
                layer, size = (view, None) if view in (3, 4) else (None, view)
                result = FeatureExtractor(backbone, layer=layer, image_size=size, quiet=True).extract(self.paths[subset])
                assert result.kept.all(), f"{subset}: images failed to decode"
                features = result.features
            self.table[backbone, subset, view] = features.astype(np.float32)
        return self.table[backbone, subset, view]


def standardised(table: FeatureTable, backbone: str, subset: str, view=None) -> np.ndarray:
    reference = table(backbone, "train", view)
    return (table(backbone, subset, view) - reference.mean(0)) / (reference.std(0) + 1e-6)


def sqrt_l2(table: FeatureTable, backbone: str, subset: str) -> np.ndarray:
    rooted = np.sqrt(np.maximum(table(backbone, subset), 0))  # the features are post-activation, >= 0 but for noise
    return rooted / np.linalg.norm(rooted, axis=1, keepdims=True)


# name -> (features of (table, backbone, subset, view) per training view, the views at test time)
FEATURE_VARIANTS = {
    "final": (lambda t, b, s, v: t(b, s, v), [None], [None]),
    "mirror": (lambda t, b, s, v: t(b, s, v), [None, "mirror"], [None, "mirror"]),
    "stages": (lambda t, b, s, v: np.concatenate([t(b, s, v), t(b, s, 4), t(b, s, 3)], 1), [None], [None]),
    "stages-standardised": (
        lambda t, b, s, v: np.concatenate([standardised(t, b, s, x) for x in (v, 4, 3)], 1), [None], [None]),
    "standardised": (standardised, [None], [None]),
    "sqrt-l2": (lambda t, b, s, v: sqrt_l2(t, b, s), [None], [None]),
    "288px-averaged": (lambda t, b, s, v: (t(b, s) + t(b, s, LARGER_SIZE)) / 2, [None], [None]),
}


def train_head(x_train, y_train, validation, seed: int, epochs: int = 50, patience: int | None = 8):
    torch.manual_seed(seed)
    head = build_head(HeadConfig("linear", x_train.shape[1], int(y_train.max()) + 1))
    history = fit(head, (x_train, y_train), validation,
                  FitConfig(epochs=epochs, batch_size=256, lr=1e-3, seed=seed, patience=patience),
                  n_classes=int(y_train.max()) + 1, quiet=True)
    return head, history


def head_probabilities(table, labels, chosen, variant, seed) -> dict[str, torch.Tensor]:
    """Probabilities of the validation and test images from the linear head(s) `variant` trains on `chosen`."""
    features, train_views, test_views = FEATURE_VARIANTS.get(variant, FEATURE_VARIANTS["final"])

    def stacked(subset, view, backbones=chosen):
        return torch.tensor(np.concatenate([features(table, b, subset, view) for b in backbones], axis=1))

    if variant == "late-fusion":
        logs = {s: 0 for s in SUBSETS[1:]}
        for backbone in chosen:
            validation = (stacked("validation", None, [backbone]), labels["validation"])
            head, _ = train_head(stacked("train", None, [backbone]), labels["train"], validation, seed)
            with torch.no_grad():
                logs = {s: logs[s] + torch.log_softmax(head(stacked(s, None, [backbone])), 1) for s in logs}
        return {s: torch.softmax(v, 1) for s, v in logs.items()}
    x_train = torch.cat([stacked("train", v) for v in train_views])
    y_train = labels["train"].repeat(len(train_views))
    validation = (stacked("validation", test_views[0]), labels["validation"])
    head, history = train_head(x_train, y_train, validation, seed)
    if variant == "refit":
        head, _ = train_head(torch.cat([x_train, validation[0]]), torch.cat([y_train, labels["validation"]]),
                             validation, seed, epochs=history.best_epoch, patience=None)
    with torch.no_grad():
        return {s: sum(torch.softmax(head(stacked(s, v)), 1) for v in test_views) for s in SUBSETS[1:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("head-variance"), help="where mirrored features are kept")
    parser.add_argument("--combinations", nargs="+", choices=list(COMBINATIONS), default=list(COMBINATIONS))
    parser.add_argument("--variants", nargs="+", choices=[*FEATURE_VARIANTS, "refit", "late-fusion"],
                        default=["final", "mirror", "stages"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    paths, labels = split_of(args.run, require_caltech())
    table = FeatureTable(paths, args.work)
    print("| backbones | variant | validation per seed | test per seed | mean validation | mean test | "
          "seeds averaged: test |")
    print("|---|---|---|---|---|---|---|")
    for combination in args.combinations:
        for variant in args.variants:
            runs = [head_probabilities(table, labels, COMBINATIONS[combination], variant, seed)
                    for seed in range(args.seeds)]
            accuracy = {s: [float((r[s].argmax(1) == labels[s]).float().mean()) for r in runs] for s in SUBSETS[1:]}
            averaged = float((sum(r["test"] for r in runs).argmax(1) == labels["test"]).float().mean())
            print(f"| {combination} | {variant} | {' '.join(f'{a:.2%}' for a in accuracy['validation'])} | "
                  f"{' '.join(f'{a:.2%}' for a in accuracy['test'])} | {np.mean(accuracy['validation']):.2%} | "
                  f"{np.mean(accuracy['test']):.2%} | {averaged:.2%} |", flush=True)


if __name__ == "__main__":
    main()
