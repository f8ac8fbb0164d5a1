"""How much of a Caltech-101/97 result is the head's seed, and do mirrored views or earlier stages add anything?

    TRANSFERLAB_CACHE=DIR .venv/bin/python bench/head_variance.py RUN [--seeds 5] [--work DIR]

RUN is a finished `transferlab train` run on Caltech-101/97 (bench/caltech.py's split; its split.csv is reused)
whose cache DIR holds the embedded backbones' features (a run with --backbone
efficientnet_lite0+efficientnet_lite1+efficientnet_lite2 fills it). Every variant trains the product's linear head
(`heads.build_head`, `training.fit`: Adam 1e-3, batch 256, 50 epochs, early stopping on validation loss) once per
seed on the same features and split, and reports validation and test accuracy per seed, their mean, and the
accuracy of the seeds' averaged probabilities. Variants:
- final: the pooled features each backbone gives by default (what `--head linear` trains on);
- mirror: training on the original and the mirrored image, and test-time averaging over both (mirrored features
  are computed here, once, and kept in --work);
- stages: the final features plus the pooled outputs of the last two stages (`--layer 4`, `--layer 3`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from common import require_caltech

from transferlab.features import FeatureExtractor
from transferlab.heads import HeadConfig, build_head
from transferlab.options import FitConfig
from transferlab.training import fit

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SUBSETS = ("train", "validation", "test")
COMBINATIONS = {"all3": BACKBONES, "lite1": ("efficientnet_lite1",), "lite1+lite2": BACKBONES[1:]}


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


def features(paths: dict[str, list[Path]], work: Path) -> dict[tuple, np.ndarray]:
    """(backbone, subset, variant) -> float32 features; variant None/4/3 is the stage, "mirror" the flip."""
    table = {}
    for backbone in BACKBONES:
        for layer in (None, 4, 3):
            extractor = FeatureExtractor(backbone, layer=layer, quiet=True)
            for subset in SUBSETS:
                result = extractor.extract(paths[subset])
                assert result.kept.all(), f"{subset}: images failed to decode"
                table[backbone, subset, layer] = result.features.astype(np.float32)
                if layer is None:
                    stored = work / f"{backbone}_{subset}_mirror.npy"
                    table[backbone, subset, "mirror"] = mirrored(extractor, paths[subset], stored).astype(np.float32)
    return table


def head_probabilities(table, labels, chosen, stages, train_variants, test_variants, seed) -> dict[str, torch.Tensor]:
    """Train one seeded linear head on `chosen` backbones' `stages` (None: the final features, or the view named
    by the variant); probabilities summed over the test-time variants, per subset."""
    def stacked(subset, variant):
        return torch.tensor(np.concatenate(
            [table[b, subset, variant if stage is None else stage] for b in chosen for stage in stages], axis=1))

    n_classes = int(labels["train"].max()) + 1
    x_train = torch.cat([stacked("train", v) for v in train_variants])
    y_train = labels["train"].repeat(len(train_variants))
    torch.manual_seed(seed)
    head = build_head(HeadConfig("linear", x_train.shape[1], n_classes))
    validation = (stacked("validation", test_variants[0]), labels["validation"])
    fit(head, (x_train, y_train), validation, FitConfig(epochs=50, batch_size=256, lr=1e-3, seed=seed),
        n_classes=n_classes, quiet=True)
    with torch.no_grad():
        return {s: sum(torch.softmax(head(stacked(s, v)), 1) for v in test_variants) for s in SUBSETS[1:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("head-variance"), help="where mirrored features are kept")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    paths, labels = split_of(args.run, require_caltech())
    table = features(paths, args.work)
    variants = {  # name -> (stages, training variants, test-time variants)
        "final": ((None,), [None], [None]),
        "mirror (train both, average both)": ((None,), [None, "mirror"], [None, "mirror"]),
        "final + stages 4, 3": ((None, 4, 3), [None], [None]),
    }
    print("| backbones | variant | validation per seed | test per seed | mean validation | mean test | "
          "seeds averaged: test |")
    print("|---|---|---|---|---|---|---|")
    for combination, chosen in COMBINATIONS.items():
        for name, (stages, train_variants, test_variants) in variants.items():
            runs = [head_probabilities(table, labels, chosen, stages, train_variants, test_variants, seed)
                    for seed in range(args.seeds)]
            accuracy = {s: [float((r[s].argmax(1) == labels[s]).float().mean()) for r in runs] for s in SUBSETS[1:]}
            averaged = float((sum(r["test"] for r in runs).argmax(1) == labels["test"]).float().mean())
            print(f"| {combination} | {name} | {' '.join(f'{a:.2%}' for a in accuracy['validation'])} | "
                  f"{' '.join(f'{a:.2%}' for a in accuracy['test'])} | {np.mean(accuracy['validation']):.2%} | "
                  f"{np.mean(accuracy['test']):.2%} | {averaged:.2%} |", flush=True)


if __name__ == "__main__":
    main()
