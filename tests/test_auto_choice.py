"""auto's choice by cross-validation, its candidates by device and its cost model from measured throughput."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from simulated_gpu import simulated_gpu

from transferlab.core.config import TrainOptions
from transferlab.core.device import resolve_device
from transferlab.core.options import DEFAULT_BUDGET, OPTIONS
from transferlab.core.settings import train_settings
from transferlab.data.dataset import load_dataset
from transferlab.model.selection import stratified_folds
from transferlab.runs.auto import cross_validated, train_auto
from transferlab.runs.auto_cost import (
    CPU_CANDIDATES,
    LITE,
    PROBE_BATCHES,
    PROBE_IMAGES,
    Candidate,
    CostModel,
    Throughput,
    candidates_for,
    plan,
    training_seconds_per_image,
)
from transferlab.runs.pipeline import train_options

LITE0 = Candidate("extract", "efficientnet_lite0")
LITE0_LINEAR = Candidate("extract", "efficientnet_lite0", head="linear")
QUIET_CPU = Throughput("cpu", extract=80.0, train=8.0)  # lite0 on a 2-core CPU, injected: nothing is timed
H200 = Throughput("cuda", extract=5000.0, train=2000.0)  # the targets for one H200-class GPU
WHOLE_NETWORK = [f"finetune-{backbone}-all" for backbone in LITE]


def scrambled_test_labels(split_csv, classes, out):
    """The split with every test image given another class."""
    rows = list(csv.DictReader(split_csv.open()))
    for row in rows:
        if row["split"] == "test":
            row["class"] = classes[(classes.index(row["class"]) + 1) % len(classes)]
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["split", "path", "class"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_the_cross_validated_choice_never_reads_the_test_split(colour_folder, tmp_path):
    dataset = load_dataset(colour_folder, seed=0)
    dataset.write_split_csv(tmp_path / "split.csv")
    scrambled = scrambled_test_labels(tmp_path / "split.csv", dataset.classes, tmp_path / "scrambled.csv")
    records = [train_auto(colour_folder, budget=600, out=tmp_path / name, epochs=3, split={"split_csv": csv_path},
                          candidates=(LITE0, LITE0_LINEAR), throughput=QUIET_CPU, quiet=True).metrics["auto"]
               for name, csv_path in (("plain", tmp_path / "split.csv"), ("scrambled", scrambled))]
    scores = [[(c["label"], c["cv_accuracy"], c["cv_std"]) for c in record["candidates"]] for record in records]
    assert scores[0] == scores[1] and records[0]["chosen"] == records[1]["chosen"]
    tested = [next(c for c in r["candidates"] if c["label"] == r["chosen"])["test_accuracy"] for r in records]
    assert tested[0] > tested[1]  # the scrambled labels did reach the test evaluation, after the choice


def test_cross_validation_scores_are_reproducible_with_the_seed():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    features = (rng.normal(size=(60, 16)) + labels[:, None]).astype(np.float32)  # classes apart, with noise
    options = train_options(train_settings({"epochs": 3, "quiet": True}))
    first, again = (cross_validated(options, features, labels, 3) for _ in range(2))
    assert first == again and first.folds == 5 and 0.0 <= first.mean <= 1.0
    assert [held.tolist() for _, held in stratified_folds(labels, seed=0)] == [
        held.tolist() for _, held in stratified_folds(labels, seed=0)]
    assert [held.tolist() for _, held in stratified_folds(labels, seed=1)] != [
        held.tolist() for _, held in stratified_folds(labels, seed=0)]


def test_folds_hold_out_every_class_and_every_image_once():
    labels = np.array([0] * 12 + [1] * 7 + [2] * 3)  # the smallest class has 3 images: 3 folds
    folds = stratified_folds(labels, folds=5, seed=0)
    assert len(folds) == 3
    held = np.concatenate([rows for _, rows in folds])
    assert sorted(held.tolist()) == list(range(len(labels)))
    assert all(set(labels[rows]) == {0, 1, 2} for _, rows in folds)


def test_on_a_gpu_auto_fine_tunes_whole_networks_within_its_budget():
    with simulated_gpu():
        device = resolve_device("auto")
        candidates = candidates_for(device)
    labels = [c.label for c in candidates]
    assert device == "cuda" and all(name in labels for name in WHOLE_NETWORK)
    assert "extract-efficientnet_lite0_efficientnet_lite1_efficientnet_lite2-linear" in labels
    # a 2,500-image set in 5 minutes at the measured speed: every candidate has a place
    cost = CostModel(n_train=1750, n_validation=375, n_test=375, throughput=H200)
    assert [c.label for c, _ in plan(candidates, cost, 300)] == labels
    # on the same set, a slow GPU leaves lite2 out
    slow = CostModel(n_train=1750, n_validation=375, n_test=375, throughput=Throughput("cuda", 500.0, 200.0))
    assert "finetune-efficientnet_lite2-all" not in [c.label for c, _ in plan(candidates, slow, 300)]


def test_on_a_gpu_the_training_probe_times_the_batch_fine_tuning_takes_there():
    batches = []

    def record_batch(module, inputs, output):
        if module.__class__.__name__ == "EfficientNet":
            batches.append(tuple(inputs[0].shape))

    options = TrainOptions(device="cuda", finetune_batch_size=6, quiet=True)
    hook = torch.nn.modules.module.register_module_forward_hook(record_batch)
    try:
        with simulated_gpu():
            seconds = training_seconds_per_image(options, resolve_device(options.device), n_train=600)
            on_cpu = training_seconds_per_image(options, "cpu", n_train=600)
    finally:
        hook.remove()
    assert seconds > 0 and on_cpu > 0
    gpu_steps, cpu_steps = batches[:1 + PROBE_BATCHES], batches[1 + PROBE_BATCHES:]
    assert set(gpu_steps) == {(6, 3, 224, 224)}  # the asked fine-tuning batch, at the input size
    assert set(cpu_steps) == {(PROBE_IMAGES // 2, 3, 112, 112)}  # on a CPU: a few images at half the size


@pytest.mark.parametrize("n_images, budget, fine_tunes_whole_network", [
    (200, 1800, True),  # a small set, a generous budget
    (200, 120, False),  # a small set, a small budget
    (6200, DEFAULT_BUDGET, False),  # Caltech-101/97's size, the default budget
])
def test_on_a_cpu_whole_network_fine_tuning_has_a_place_only_where_the_estimate_fits(n_images, budget,
                                                                                 fine_tunes_whole_network):
    assert candidates_for("cpu") == CPU_CANDIDATES
    cost = CostModel(n_train=int(n_images * 0.7), n_validation=int(n_images * 0.15), n_test=int(n_images * 0.15),
                     throughput=QUIET_CPU)
    planned = [c.label for c, _ in plan(CPU_CANDIDATES, cost, budget)]
    assert planned[0] == LITE0.label  # the first always: auto needs a model
    assert ("finetune-efficientnet_lite0-all" in planned) == fine_tunes_whole_network


def test_cached_features_cost_nothing_to_extract():
    cold = CostModel(n_train=4347, n_validation=931, n_test=931, throughput=QUIET_CPU)
    warm = CostModel(n_train=4347, n_validation=931, n_test=931, throughput=QUIET_CPU,
                     cached={"efficientnet_lite2": 1.0})
    lite2 = Candidate("extract", "efficientnet_lite2")
    assert warm.estimate(lite2) == pytest.approx(cold.cross_validation(lite2))
    assert cold.estimate(lite2) > 60  # 5,278 images through lite2 at ~36 images/s


def test_the_default_budget_is_six_minutes_from_the_option_table(colour_folder, tmp_path):
    assert DEFAULT_BUDGET <= 360 and "default 6m" in OPTIONS["budget"].help
    train_auto(colour_folder, out=tmp_path / "auto", epochs=2, candidates=(LITE0,), throughput=QUIET_CPU, quiet=True)
    assert json.loads((tmp_path / "auto" / "auto.json").read_text())["budget_seconds"] == DEFAULT_BUDGET


def scored_attempt(candidate: Candidate, scores: tuple[float, ...]):
    from transferlab.runs.auto import Attempt

    return candidate, Attempt(candidate.label, candidate.strategy, candidate.backbone, 0.0,
                              cv_accuracy=float(np.mean(scores)), cv_std=float(np.std(scores)), cv_scores=scores)


def test_a_linear_head_within_one_standard_error_of_the_best_on_the_same_features_is_chosen():
    from transferlab.runs.auto import chosen_by_cross_validation, why_chosen

    mlp = scored_attempt(LITE0, (0.952, 0.948, 0.960, 0.945, 0.951))
    # 0.06 points below the best, whose standard error is 0.26
    linear = scored_attempt(LITE0_LINEAR, (0.955, 0.945, 0.957, 0.947, 0.949))
    other = scored_attempt(Candidate("extract", "efficientnet_lite2"), (0.940, 0.941, 0.950, 0.936, 0.940))
    assert chosen_by_cross_validation([other, mlp, linear]) == linear
    linear[1].val_accuracy = 0.95
    assert "within one standard error" in why_chosen(linear[1], [other[1], mlp[1], linear[1]], 400)


def test_a_linear_head_clearly_behind_in_every_fold_is_not_chosen():
    from transferlab.runs.auto import chosen_by_cross_validation

    mlp = scored_attempt(LITE0, (0.952, 0.948, 0.960, 0.945, 0.951))
    linear = scored_attempt(LITE0_LINEAR, (0.942, 0.937, 0.951, 0.934, 0.942))  # a point behind: beyond noise
    assert chosen_by_cross_validation([mlp, linear]) == mlp


def test_the_one_standard_error_rule_never_swaps_features():
    from transferlab.runs.auto import chosen_by_cross_validation

    lite2 = scored_attempt(Candidate("extract", "efficientnet_lite2"), (0.952, 0.948, 0.960, 0.945, 0.951))
    linear = scored_attempt(LITE0_LINEAR, (0.951, 0.948, 0.959, 0.945, 0.950))
    assert chosen_by_cross_validation([linear, lite2]) == lite2
