"""Keras-style summaries of backbones and trained models: shapes, parameter counts, frozen parts, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from transferlab.backbones.registry import create_backbone
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.classifier import Classifier
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.summary import (
    summarize,
    summarize_backbone,
    summarize_run,
    summary_of,
)


def rows_by_name(summary):
    return {row.name: row for row in summary.rows}


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def saved_classifier(directory, backbone_state=None, strategy="extract"):
    """A run folder with model.json and weights, as `train` writes it, without training."""
    config = HeadConfig("mlp", 1280, 3)
    torch.manual_seed(0)
    extractor = FeatureExtractor("efficientnet_lite0", backbone_state=backbone_state)
    Classifier(extractor=extractor, classes=["a", "b", "c"], head=build_head(config), head_config=config,
               strategy=strategy).save(directory)
    return directory


def test_totals_equal_the_models_parameter_count():
    model = small_model()
    summary = summarize(model, 32)
    assert summary.total == sum(p.numel() for p in model.parameters()) == 8 * 27 + 8 + 8 * 5 + 5
    assert summary.trainable == summary.total and summary.non_trainable == 0


def test_frozen_trunk_counts_as_non_trainable():
    model = small_model()
    model[0].requires_grad_(False)
    summary = summarize(model, 32)
    assert summary.trainable == 8 * 5 + 5
    assert summary.non_trainable == 8 * 27 + 8
    rows = rows_by_name(summary)
    assert (rows["0"].status, rows["1"].status, rows["4"].status) == ("frozen", "", "trainable")


@pytest.fixture(scope="module")
def lite0_summary():
    return summarize_backbone("efficientnet_lite0")


def test_output_shapes_of_efficientnet_lite0_at_224(lite0_summary):
    model = create_backbone("efficientnet_lite0", pretrained=False)
    summary = lite0_summary
    rows = rows_by_name(summary)
    assert summary.input_shape == (3, 224, 224)
    assert rows["conv_stem"].output_shape == (32, 112, 112)
    assert rows["blocks"].output_shape == (320, 7, 7)
    assert rows["global_pool"].output_shape == (1280,)
    assert rows["classifier"].output_shape == (1000,)
    assert summary.total == sum(p.numel() for p in model.parameters())


def test_input_size_changes_the_output_shapes():
    rows = rows_by_name(summarize_backbone("efficientnet_lite0", input_size=160))
    assert rows["conv_stem"].output_shape == (32, 80, 80)
    assert rows["conv_head"].output_shape == (1280, 5, 5)


def test_depth_controls_how_much_nesting_is_listed(lite0_summary):
    top, nested = summarize_backbone("efficientnet_lite0", depth=0), lite0_summary
    assert {row.level for row in top.rows} == {0}
    assert "blocks.0" not in rows_by_name(top) and rows_by_name(nested)["blocks.0"].level == 1
    assert top.total == nested.total


def test_run_summary_marks_the_backbone_frozen_and_the_head_trainable(tmp_path):
    summary = summarize_run(saved_classifier(tmp_path / "run"))
    rows = rows_by_name(summary)
    head_params = 1280 * 256 + 256 + 256 * 3 + 3
    assert summary.trainable == head_params
    assert summary.non_trainable == sum(p.numel() for p in create_backbone("efficientnet_lite0", pretrained=False).parameters())
    assert (rows["backbone"].status, rows["head"].status) == ("frozen", "trainable")
    assert rows["backbone"].output_shape == (1280,) and rows["head"].output_shape == (3,)
    assert rows["backbone.classifier"].shape_text == "not used"  # the ImageNet head is bypassed


def test_run_summary_marks_fine_tuned_tensors_trainable(tmp_path):
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    tuned = {k: v for k, v in backbone.state_dict().items() if k.startswith(("conv_head.", "bn2."))}
    rows = rows_by_name(summarize_run(saved_classifier(tmp_path / "run", tuned, strategy="finetune")))
    assert rows["backbone.conv_head"].status == "trainable"
    assert rows["backbone.blocks"].status == "frozen"
    assert rows["backbone"].status == "partly trainable"
    assert rows["backbone"].trainable == 1280 * 320 + 2 * 1280


def test_input_size_a_model_cannot_take_is_a_clear_error():
    with pytest.raises(TransferlabError, match="does not run on a 8×8 input"):
        summarize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)), 8)


def test_unknown_target_is_a_clear_error(tmp_path):
    with pytest.raises(TransferlabError, match="neither a run folder nor a backbone"):
        summary_of(str(tmp_path / "missing"))


def test_cli_summary_prints_a_keras_style_table():
    result = CliRunner().invoke(app, ["summary", "efficientnet_lite0", "--depth", "0"])
    assert result.exit_code == 0, result.output
    for text in ("conv_stem", "32×112×112", "Total params: 4,652,008", "Non-trainable params: 0"):
        assert text in result.output


def test_cli_summary_of_a_run_in_json(tmp_path):
    run = saved_classifier(tmp_path / "run")
    result = CliRunner().invoke(app, ["--json", "summary", str(run), "--input-size", "192"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["input_shape"] == [3, 192, 192]
    assert data["trainable"] == 1280 * 256 + 256 + 256 * 3 + 3
    assert data["total"] == data["trainable"] + data["non_trainable"]
