"""Recipes of the from-scratch baseline: the lesson's network and settings, the default, user options winning."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from conftest import write_colour_classes
from typer.testing import CliRunner

import transferlab
import transferlab.strategies.scratch as scratch
from transferlab.backbones.registry import create_backbone
from transferlab.cli.app import app
from transferlab.core.config import SCRATCH_RECIPES, scratch_recipe
from transferlab.core.errors import TransferlabError
from transferlab.data.augment import AugmentConfig
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import fit as real_fit


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_colour_classes(tmp_path_factory.mktemp("colours"), 6)


@pytest.fixture
def fit_calls(monkeypatch):
    """Record what scratch hands to fit, then train for one epoch only (the tests check settings, not learning)."""
    calls = []

    def recording_fit(module, train, val, config, **kwargs):
        calls.append({"config": config, "augment": kwargs["batch_transform"].config})
        return real_fit(module, train, val, dataclasses.replace(config, epochs=1), **kwargs)

    monkeypatch.setattr(scratch, "fit", recording_fit)
    return calls


def test_lesson_recipe_builds_the_lessons_architecture():
    network = create_backbone(scratch_recipe("lesson").backbone, pretrained=False)
    head = build_head(HeadConfig("mlp", network.num_features, 97))
    conv, relu, pool, dropout = torch.nn.Conv2d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.Dropout
    block = [conv, relu, pool]
    assert [type(m) for m in network.features] == block + block + [dropout] + block + block + [dropout]
    assert [type(m) for m in head.modules() if not isinstance(m, torch.nn.Sequential)] == [
        torch.nn.Linear, relu, dropout, torch.nn.Linear
    ]
    convs = [m for m in network.features if isinstance(m, conv)]
    assert all(c.out_channels == 32 and c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert [m.p for m in network.features if isinstance(m, dropout)] == [0.25, 0.25]
    # The lesson's Keras summary, by hand: 224 -> conv 222 -> pool 111 -> 109 -> 54 -> 52 -> 26 -> 24 -> 12.
    first_conv, other_conv = 3 * 3 * 3 * 32 + 32, 3 * 3 * 32 * 32 + 32
    flattened = 12 * 12 * 32
    dense, softmax = flattened * 256 + 256, 256 * 97 + 97
    assert network.num_features == flattened
    parameters = sum(p.numel() for p in [*network.parameters(), *head.parameters()])
    assert parameters == first_conv + 3 * other_conv + dense + softmax == 1_233_473
    assert network(torch.zeros(1, 3, 224, 224)).shape == (1, flattened)


def test_lesson_recipe_trains_with_the_lessons_settings(colours, fit_calls, tmp_path):
    classifier = transferlab.train(colours, strategy="scratch", recipe="lesson", out=tmp_path / "run", quiet=True)
    config = fit_calls[0]["config"]
    assert (config.batch_size, config.epochs, config.lr, config.optimizer) == (128, 10, 1e-3, "adam")
    assert fit_calls[0]["augment"] is None  # no augmentation
    assert classifier.backbone == "small_cnn_224" and classifier.extractor.spec.input_size == 224
    assert classifier.metrics["recipe"] == "lesson"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["options"]["recipe"] == "lesson"


def test_explicit_options_win_over_the_recipe(colours, fit_calls, tmp_path):
    transferlab.train(colours, strategy="scratch", recipe="lesson", epochs=3, fit={"batch_size": 8}, lr=5e-3,
                      augment="light", out=tmp_path / "run", quiet=True)
    config = fit_calls[0]["config"]
    assert (config.batch_size, config.epochs, config.lr) == (8, 3, 5e-3)
    assert fit_calls[0]["augment"] == AugmentConfig.light()


def test_scratch_without_a_recipe_uses_the_default_recipe(colours, fit_calls, tmp_path):
    classifier = transferlab.train(colours, strategy="scratch", out=tmp_path / "run", quiet=True)
    default = SCRATCH_RECIPES["default"]
    config = fit_calls[0]["config"]
    assert (config.batch_size, config.epochs, config.lr) == (default.batch_size, default.epochs, default.lr)
    assert fit_calls[0]["augment"] == (None if default.augment == "none" else AugmentConfig.preset(default.augment))
    assert classifier.backbone == default.backbone and classifier.metrics["recipe"] == "default"


def test_recipe_is_refused_outside_scratch_and_when_unknown(colours):
    with pytest.raises(TransferlabError, match="scratch only"):
        transferlab.train(colours, strategy="extract", recipe="lesson", quiet=True)
    with pytest.raises(TransferlabError, match="unknown recipe 'keras'"):
        transferlab.train(colours, strategy="scratch", recipe="keras", quiet=True)


def test_cli_recipe_flag_reaches_train(colours, monkeypatch):
    received = {}
    monkeypatch.setattr("transferlab.api.train", lambda data, **kwargs: received.update(kwargs) or exit(0))
    result = CliRunner().invoke(app, ["--quiet", "train", str(colours), "--strategy", "scratch", "--recipe", "lesson"])
    assert result.exit_code == 0, result.output
    assert received["recipe"] == "lesson" and received["epochs"] is None  # None: the recipe's epochs


def test_compare_names_the_scratch_recipe_it_ran(colours, fit_calls, tmp_path):
    comparison = transferlab.compare(colours, ["scratch"], out=tmp_path / "cmp", quiet=True)
    assert comparison.rows[0]["recipe"] == "default"
    assert "scratch (default recipe)" in (tmp_path / "cmp" / "compare.md").read_text()


def test_scratch_networks_start_from_keras_initialisation(colours, monkeypatch, tmp_path):
    """glorot_uniform kernels and zero biases in the convnet and the head, as in the Keras lessons; PyTorch's
    default draws smaller weights (bound 1/sqrt(fan_in)) and non-zero biases."""
    built = {}

    def recording_fit(module, train, val, config, **kwargs):
        built["network"] = copy.deepcopy(module)  # as fit receives it, before any step
        return real_fit(module, train, val, dataclasses.replace(config, epochs=1), **kwargs)

    monkeypatch.setattr(scratch, "fit", recording_fit)
    transferlab.train(colours, strategy="scratch", epochs=1, out=tmp_path / "run", quiet=True)
    layers = [m for m in built["network"].modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 4 + 2  # four convolutions, the head's two dense layers
    for layer in layers:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        receptive = layer.weight[0, 0].numel()
        glorot_bound = (6 / (fan_in + fan_out * receptive)) ** 0.5
        assert torch.all(layer.bias == 0)
        assert layer.weight.abs().max() <= glorot_bound
        assert layer.weight.abs().max() > 0.9 * glorot_bound  # uniform over the whole glorot range
    inner_convs = [layer for layer in layers if isinstance(layer, torch.nn.Conv2d) and layer.in_channels == 32]
    assert len(inner_convs) == 3 and all(c.weight.abs().max() > 1.5 / (32 * 9) ** 0.5 for c in inner_convs)


def test_default_recipe_standardises_inputs_with_the_training_images_channel_statistics(colours, fit_calls, tmp_path):
    import numpy as np

    transferlab.train(colours, strategy="scratch", out=tmp_path / "run", quiet=True)
    assert fit_calls[0]["augment"] is None  # standardisation is no per-image augmentation: images go in as decoded
    split = transferlab.dataset(colours)  # the split train drew (same seed)
    decoder = transferlab.load(tmp_path / "run").extractor
    decoded = torch.from_numpy(np.stack([decoder.prepare(path) for path in split.train.paths])).permute(0, 3, 1, 2)
    mean, std = scratch.channel_statistics(decoded)
    saved_mean, saved_std = json.loads((tmp_path / "run" / "model.json").read_text())["normalization"]
    np.testing.assert_allclose(saved_mean, mean, atol=1e-6)
    np.testing.assert_allclose(saved_std, std, atol=1e-5)


def test_lesson_recipe_keeps_kerass_rescaling_by_255(colours, fit_calls, tmp_path):
    transferlab.train(colours, strategy="scratch", recipe="lesson", out=tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["normalization"] is None  # the spec's x/255
