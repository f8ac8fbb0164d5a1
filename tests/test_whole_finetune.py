"""Whole-network fine-tuning (AdamW, one-cycle, label smoothing, discriminative learning rates, BatchNorm
frozen or re-estimated) and a network input size other than the backbone's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import write_colour_classes
from simulated_gpu import simulated_gpu

import transferlab
from transferlab.backbones.registry import create_backbone
from transferlab.core.config import FitConfig, TrainOptions
from transferlab.core.errors import TransferlabError
from transferlab.deploy.export import export_run
from transferlab.model.training import batch_scaled_lr, fit, make_scheduler
from transferlab.strategies import run_strategy
from transferlab.strategies.finetune import (
    EARLIEST_BLOCK_LR_FRACTION,
    MIN_STEPS,
    block_groups,
    discriminative_lr_scales,
    finetune_config,
)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_classes(tmp_path_factory.mktemp("colours"), 12)


def test_discriminative_learning_rates_fall_from_the_top_block_to_a_tenth_at_the_earliest():
    model = create_backbone("efficientnet_lite0", pretrained=False)
    groups = block_groups(model)
    head = torch.nn.Linear(1280, 3)
    scales = discriminative_lr_scales(model, groups, head)
    fractions = [scale for _, scale in scales]
    assert fractions[0] == pytest.approx(EARLIEST_BLOCK_LR_FRACTION)
    assert fractions[-2] == pytest.approx(1.0) and fractions[-1] == 1.0  # top block and head
    assert all(a < b for a, b in zip(fractions[:-2], fractions[1:-1]))
    covered = {id(p) for params, _ in scales for p in params}
    assert covered == {id(p) for n, p in model.named_parameters() if not n.startswith("classifier.")} | {
        id(p) for p in head.parameters()
    }


def test_one_cycle_schedule_warms_up_then_decays_each_group_to_near_zero():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 1e-4}])
    scheduler = make_scheduler(optimizer, FitConfig(epochs=5, schedule="one-cycle"), batches=10)
    top = []
    for _ in range(50):
        top.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(top))
    assert 5 <= peak <= 15 and top[peak] == pytest.approx(1e-3)  # warm-up over the first 20% of 50 steps
    assert top[0] < 1e-4 and top[-1] < 1e-5
    assert optimizer.param_groups[1]["lr"] < optimizer.param_groups[0]["lr"]
    assert make_scheduler(optimizer, FitConfig(), batches=10) is None


def test_label_smoothing_and_schedule_are_validated():
    with pytest.raises(TransferlabError, match="label smoothing"):
        FitConfig(label_smoothing=1.0)
    with pytest.raises(TransferlabError, match="schedule"):
        FitConfig(schedule="step")
    with pytest.raises(TransferlabError, match="batchnorm"):
        TrainOptions(batchnorm="sometimes")
    with pytest.raises(TransferlabError, match="image size"):
        TrainOptions(image_size=8)


def test_label_smoothing_changes_the_training_loss():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    losses = []
    for smoothing in (0.0, 0.3):
        module = torch.nn.Linear(4, 3)
        torch.nn.init.zeros_(module.weight), torch.nn.init.zeros_(module.bias)
        config = FitConfig(epochs=1, batch_size=64, lr=1e-9, patience=None, label_smoothing=smoothing)
        losses.append(fit(module, (x, y), (x, y), config, n_classes=3, quiet=True).epochs[0]["loss"])
    assert losses[0] == pytest.approx(np.log(3), rel=1e-4)  # uniform logits: smoothing cannot lower it
    assert losses[1] == pytest.approx(np.log(3), rel=1e-4)
    module = torch.nn.Linear(4, 3)
    with torch.no_grad():
        module.weight.zero_(), module.bias.zero_()
        module.weight[:, 0] = torch.tensor([5.0, 0.0, 0.0])  # confident logits: smoothing costs loss
    x_conf, y_conf = torch.ones(8, 4), torch.zeros(8, dtype=torch.long)
    plain = fit(module, (x_conf, y_conf), (x_conf, y_conf), FitConfig(epochs=1, batch_size=8, lr=1e-9, patience=None),
                n_classes=3, quiet=True).epochs[0]["loss"]
    smoothed = fit(module, (x_conf, y_conf), (x_conf, y_conf),
                   FitConfig(epochs=1, batch_size=8, lr=1e-9, patience=None, label_smoothing=0.3),
                   n_classes=3, quiet=True).epochs[0]["loss"]
    assert smoothed > plain + 0.1


def test_end_to_end_fine_tuning_uses_adamw_one_cycle_and_label_smoothing():
    config = finetune_config(TrainOptions(unfreeze="all"), end_to_end=True, n_train=5000)
    assert (config.optimizer, config.schedule, config.lr, config.batch_size) == ("adamw", "one-cycle", 1e-3, 32)
    assert config.label_smoothing > 0 and config.weight_decay > 0
    cached = finetune_config(TrainOptions(), end_to_end=False, n_train=5000)
    assert (cached.optimizer, cached.schedule, cached.lr, cached.label_smoothing) == ("rmsprop", "constant", 1e-5, 0.0)
    assert finetune_config(TrainOptions(finetune_lr=3e-4), end_to_end=True, n_train=5000).lr == 3e-4


@pytest.mark.parametrize(("n_train", "epochs", "batch_size"),
                         [(50_000, 10, 256), (1769, 20, 128), (1257, 10, 64), (1257, 6, 32), (20, 10, 32)])
def test_fine_tuning_end_to_end_on_a_gpu_takes_large_batches_with_the_learning_rate_scaled(n_train, epochs, batch_size):
    options = dict(device="cuda", finetune_epochs=epochs)
    with simulated_gpu():
        config = finetune_config(TrainOptions(unfreeze="all", **options), end_to_end=True, n_train=n_train)
        cached = finetune_config(TrainOptions(**options), end_to_end=False, n_train=n_train)
    assert config.batch_size == batch_size  # the largest up to 256 whose epochs still make MIN_STEPS steps
    assert batch_size == 32 or epochs * -(-n_train // batch_size) >= MIN_STEPS
    assert config.lr == pytest.approx(1e-3 * (batch_size / 32) ** 0.5)
    assert (cached.batch_size, cached.lr) == (32, 1e-5)  # the cached top block trains as the notebooks do
    on_cpu = finetune_config(TrainOptions(unfreeze="all", device="cpu", finetune_epochs=epochs), end_to_end=True,
                             n_train=n_train)
    assert (on_cpu.batch_size, on_cpu.lr) == (32, 1e-3)


def test_a_finetune_batch_size_asked_for_is_kept_and_scales_only_the_default_learning_rate():
    asked = finetune_config(TrainOptions(finetune_batch_size=128), end_to_end=True, n_train=5000)
    assert (asked.batch_size, asked.lr) == (128, pytest.approx(2e-3))
    cached = finetune_config(TrainOptions(finetune_batch_size=8), end_to_end=False, n_train=5000)
    assert (cached.batch_size, cached.lr) == (8, pytest.approx(0.5e-5))
    both = finetune_config(TrainOptions(finetune_batch_size=128, finetune_lr=3e-4), end_to_end=True, n_train=5000)
    assert (both.batch_size, both.lr) == (128, 3e-4)


def test_batch_scaled_learning_rate_is_square_root_for_adaptive_optimisers_and_linear_for_sgd():
    assert batch_scaled_lr(1e-3, "adamw", 128, 32) == pytest.approx(2e-3)
    assert batch_scaled_lr(1e-5, "rmsprop", 8, 32) == pytest.approx(0.5e-5)
    assert batch_scaled_lr(0.1, "sgd", 256, 32) == pytest.approx(0.8)
    assert batch_scaled_lr(1e-3, "adam", 32, 32) == 1e-3


def test_a_gpu_out_of_memory_while_fine_tuning_names_the_batch_size_flag(colours):
    def memory_for_eight_images(module, inputs, output):  # a GPU that holds 8 images' training activations
        if isinstance(module, torch.nn.Conv2d) and module.training and torch.is_grad_enabled() and len(inputs[0]) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    split = transferlab.dataset(colours)
    options = TrainOptions(unfreeze="all", device="cuda", quiet=True, finetune_epochs=1, finetune_batch_size=16,
                           fit=FitConfig(epochs=1).resolved("finetune"))
    hook = torch.nn.modules.module.register_module_forward_hook(memory_for_eight_images)
    try:
        with simulated_gpu(), pytest.raises(TransferlabError, match="batches of 16") as raised:
            run_strategy("finetune", split, options)
    finally:
        hook.remove()
    assert "--finetune-batch-size (e.g. 8)" in raised.value.hint


@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_whole_network_fine_tuning_with_batchnorm_frozen_or_reestimated(colours, batchnorm):
    split = transferlab.dataset(colours)
    options = TrainOptions(fit=FitConfig(epochs=2, patience=None), quiet=True, views=1, unfreeze="all",
                           finetune_epochs=1, image_size=64, batchnorm=batchnorm)
    result = run_strategy("finetune", split, options)
    assert result.extra["finetune_path"] == "end-to-end" and result.extra["batchnorm"] == batchnorm
    if result.classifier.backbone_state is not None:
        pretrained = create_backbone("efficientnet_lite0").state_dict()
        running = "bn2.running_mean"
        moved = not torch.equal(result.classifier.backbone_state[running], pretrained[running])
        assert moved == (batchnorm == "train")


def test_image_size_is_used_for_training_prediction_and_export(colours, tmp_path):
    classifier = transferlab.train(colours, out=tmp_path / "run", trunk={"image_size": 96}, epochs=3, quiet=True)
    description = json.loads((tmp_path / "run" / "model.json").read_text())
    assert description["image_size"] == 96 and description["preprocessing"]["input_size"] == 96
    reloaded = transferlab.load(tmp_path / "run")
    assert reloaded.extractor.spec.input_size == 96
    image = next((colours / "red").glob("*.jpg"))
    np.testing.assert_allclose(reloaded.predict_proba([image])[0], classifier.predict_proba([image])[0], atol=1e-5)
    export_run(tmp_path / "run", timing_seconds=0.1)
    graph = onnx.load(str(tmp_path / "run" / "model.onnx")).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][2:] == [96, 96]


def test_image_size_is_refused_for_scratch(colours, tmp_path):
    with pytest.raises(TransferlabError, match="--image-size"):
        transferlab.train(colours, strategy="scratch", trunk={"image_size": 96}, out=tmp_path / "run", quiet=True)


@pytest.mark.parametrize("frozen", [True, False])
def test_batchnorm_statistics_move_only_when_not_frozen(frozen):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x, y = torch.randn(16, 3, 6, 6) * 3 + 2, torch.randint(0, 2, (16,))
    module(x[:2])  # materialise the lazy layer
    before = module[1].running_mean.clone()
    fit(module, (x, y), (x, y), FitConfig(epochs=1, batch_size=8, patience=None), n_classes=2,
        keep_batchnorm_frozen=frozen, quiet=True)
    assert torch.equal(module[1].running_mean, before) == frozen
