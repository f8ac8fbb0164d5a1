"""`transferlab doctor` on Caltech-101/97 (docs/benchmarks.md): planted near-duplicates, flipped labels, and
`train --skip` on doctor's findings. The data folder is never touched: each case is a copy made of symbolic links
(plus the planted files) in a temporary folder; features come from one cache (TRANSFERLAB_CACHE, or a temporary
one), which the content-keyed cache shares across the copies.

    .venv/bin/python bench/doctor.py duplicates [--n 100]
    .venv/bin/python bench/doctor.py labels [--flip 0.05] [--backbone efficientnet_lite0]
    .venv/bin/python bench/doctor.py skip [--flip 0.10]
    .venv/bin/python bench/doctor.py warm [--repeat 3]   # the real CLI on Caltech-101/97 itself, features cached
    .venv/bin/python bench/doctor.py cold [--repeat 1]   # cold doctor against cold train, each on an empty cache
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import CALTECH_EXCLUDED, machine, require_caltech

from sklearn.preprocessing import normalize

from transferlab.data.dataset import load_dataset
from transferlab.data.image_checks import facts_of
from transferlab.data.same_picture import same_picture_scores
from transferlab.features.combined import build_extractor
from transferlab.data.layouts import relative
from transferlab.runs.doctor import doctor

PAIR_KINDS = ("duplicate", "leak", "conflict")


def clean_split(data: Path):
    return load_dataset(data, exclude=CALTECH_EXCLUDED.split(","), seed=0)


def linked_copy(dataset, root: Path, flip: float = 0.0, seed: int = 0) -> set[str]:
    """root/<split>/<class>/<file> links to the clean split's files (a pre-split layout: the same test images),
    with a share `flip` of the training images filed under another class (seeded). Returns the flipped paths."""
    rng = np.random.default_rng(seed)
    flipped = set(rng.choice(len(dataset.train), round(flip * len(dataset.train)), replace=False).tolist())
    moved = set()
    for name, subset in dataset.subsets().items():
        for i, (path, label) in enumerate(zip(subset.paths, subset.labels)):
            if name == "train" and i in flipped:
                label = (label + rng.integers(1, len(dataset.classes))) % len(dataset.classes)
            target = root / name / dataset.classes[label] / f"{path.parent.name}-{path.name}"  # names stay unique
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
            if name == "train" and i in flipped:
                moved.add(relative(target, root))
    return moved


def planted_copy(source: Path, target: Path, rng: np.random.Generator) -> str:
    """A near-copy: cropped by up to 10%, resized 0.5-0.9x, mirrored half the time, JPEG quality 60-90."""
    image = Image.open(source).convert("RGB")
    w, h = image.size
    crop = rng.uniform(0, 0.10)
    left, top = (rng.uniform(0, crop) * w, rng.uniform(0, crop) * h)
    image = image.crop((left, top, left + (1 - crop) * w, top + (1 - crop) * h))
    scale = rng.uniform(0.5, 0.9)
    image = image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))))
    mirrored = rng.random() < 0.5
    if mirrored:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    quality = int(rng.integers(60, 91))
    image.save(target, quality=quality)
    return f"crop {crop:.0%}, x{scale:.2f}, q{quality}{', mirrored' if mirrored else ''}"


def duplicates(args) -> None:
    dataset = clean_split(require_caltech())
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "caltech"
        linked_copy(dataset, root)
        sources = rng.choice(len(dataset.train), args.n, replace=False)
        planted = {}
        for n, i in enumerate(sources):
            source, label = dataset.train.paths[i], dataset.classes[dataset.train.labels[i]]
            split = rng.choice(["train", "validation", "test"], p=[0.7, 0.15, 0.15])
            target = root / split / label / f"planted_{n:03d}.jpg"
            how = planted_copy(source, target, rng)
            planted[frozenset({relative(target, root), f"train/{label}/{label}-{source.name}"})] = how
        start = time.perf_counter()
        findings = doctor(root, write=False, quiet=True)
        seconds = time.perf_counter() - start
        stats = pair_stats(findings, planted)
    reported = {frozenset({r.path, r.partner}): r for r in findings.rows if r.kind in PAIR_KINDS}
    found = [pair for pair in planted if pair in reported]
    extra = [r for pair, r in reported.items() if pair not in planted]
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; doctor {seconds:.0f} s (features cached)")
    print(f"planted {len(planted)}, found {len(found)} (recall {len(found) / len(planted):.1%}); "
          f"reported pairs {len(reported)}, not planted {len(extra)} ({len(extra) / max(1, len(reported)):.1%})")
    for pair, how in planted.items():
        if pair not in reported:
            print("missed:", sorted(pair), how, "cosine %.3f, aligned %.3f, colours %.3f apart" % stats[pair])
    for r in extra:
        print("not planted:", r.kind, r.path, r.partner, r.score, r.detail)


def pair_stats(findings, pairs) -> dict:
    """(feature cosine, pixel alignment, colour difference) of each pair: where the thresholds would have to be
    to find it."""
    extractor = build_extractor("efficientnet_lite0", quiet=True, precision="auto")
    stats = {}
    for pair in pairs:
        paths = [findings.paths[name] for name in sorted(pair)]
        a, b = normalize(extractor.extract(paths).features)
        thumbnails = np.stack([facts.thumbnail for facts in facts_of(paths)])
        aligned, colours = same_picture_scores(thumbnails, np.array([[0, 1]]), min_alignment=-1)
        stats[pair] = (float(a @ b), float(aligned[0]), float(colours[0]))
    return stats


def flipped_folder(flip: float, folder: str):
    dataset = clean_split(require_caltech())
    root = Path(folder) / "caltech"
    return root, linked_copy(dataset, root, flip=flip)


def labels(args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root, flipped = flipped_folder(args.flip, folder)
        start = time.perf_counter()
        findings = doctor(root, backbone=args.backbone, write=False, quiet=True)
        seconds = time.perf_counter() - start
    flagged = [r.path for r in findings.rows if r.kind == "label"]
    hits = sum(path in flipped for path in flagged)
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; doctor {seconds:.0f} s (features cached); {args.backbone}")
    print(f"flipped {len(flipped)} of the training images ({args.flip:.0%}); flagged {len(flagged)}: "
          f"precision {hits / max(1, len(flagged)):.1%}, recall {hits / len(flipped):.1%}")
    counts = findings.counts()
    print("all findings:", json.dumps(counts))


def train_run(data: Path, out: Path, extra: list[str]) -> float:
    subprocess.run([sys.executable, "-m", "transferlab", "--quiet", "train", str(data), "--seed", "0", "--out",
                    str(out), *extra], check=True)
    return json.loads((out / "metrics.json").read_text())["test_accuracy"]


def skip(args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        clean_root = Path(folder) / "clean"
        linked_copy(clean_split(require_caltech()), clean_root)
        root, flipped = flipped_folder(args.flip, folder)
        runs = Path(folder) / "runs"
        clean = train_run(clean_root, runs / "clean", [])
        noisy = train_run(root, runs / "noisy", [])
        doctor(root, out=runs / "doctor", quiet=True)
        skipped = train_run(root, runs / "skipped", ["--skip", str(runs / "doctor")])
        config = json.loads((runs / "skipped" / "config.json").read_text())
    left_out = set(config.get("skipped_by_doctor", []))
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; {args.flip:.0%} of the training labels flipped")
    print(f"test accuracy: clean {clean:.2%}, noisy {noisy:.2%}, noisy --skip doctor {skipped:.2%}; "
          f"recovered {(skipped - noisy) / (clean - noisy):.0%} of the loss")
    print(f"skipped {len(left_out)} files, {len(left_out & flipped)} of the {len(flipped)} flipped")


def warm(args) -> None:
    """Wall time of `transferlab doctor` (a new process, as a user runs it) on the Caltech folder itself, after a
    first run that fills the caches (features, image facts)."""
    data = require_caltech()
    with tempfile.TemporaryDirectory() as folder:
        seconds = []
        for n in range(1 + args.repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "transferlab", "--quiet", "doctor", str(data), "--exclude",
                            CALTECH_EXCLUDED, "--out", str(Path(folder) / f"run{n}")], check=True)
            seconds.append(time.perf_counter() - start)
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; doctor on {data.name} (Caltech-101/97)")
    print(f"first run {seconds[0]:.1f} s; warm runs {', '.join(f'{s:.1f}' for s in seconds[1:])} s")


def cold(args) -> None:
    """Wall time of `transferlab train` and of `transferlab doctor` on Caltech-101/97, each with an empty cache
    (features extracted, ONNX trunk exported, images decoded), alternated `--repeat` times."""
    data = require_caltech()
    commands = {"train": ["train", str(data), "--seed", "0", "--explain", "0"], "doctor": ["doctor", str(data)]}
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for n in range(args.repeat):
        for name, command in commands.items():
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "transferlab", "--quiet", *command, "--exclude", CALTECH_EXCLUDED,
                                "--out", str(Path(folder) / "run")], check=True,
                               env={**os.environ, "TRANSFERLAB_CACHE": str(Path(folder) / "cache")})
                seconds[name].append(time.perf_counter() - start)
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; cold runs on {data.name} (Caltech-101/97), empty caches")
    for name, values in seconds.items():
        print(f"{name}: {', '.join(f'{s:.1f}' for s in values)} s")
    print(f"doctor / train: {np.mean(seconds['doctor']) / np.mean(seconds['train']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=("duplicates", "labels", "skip", "warm", "cold"))
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--flip", type=float, default=None)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    args.flip = args.flip if args.flip is not None else (0.10 if args.case == "skip" else 0.05)
    args.repeat = args.repeat or (1 if args.case == "cold" else 3)
    {"duplicates": duplicates, "labels": labels, "skip": skip, "warm": warm, "cold": cold}[args.case](args)


if __name__ == "__main__":
    main()
