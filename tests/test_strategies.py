"""Strategies augment, finetune and scratch, and test-time augmentation, on generated and real images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_colour_classes

import transferlab
from transferlab.backbones.registry import create_backbone, get_spec
from transferlab.backbones.trunk import Trunk, split_backbone
from transferlab.core.config import FitConfig
from transferlab.core.errors import TransferlabError
from transferlab.data.augment import AugmentConfig
from transferlab.features.extractor import FeatureExtractor
from transferlab.strategies import TrainOptions, run_strategy
from transferlab.strategies.augment import FrozenBaseFeatures
from transferlab.strategies.finetune import TailNet
from transferlab.strategies.inputs import decode_images


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """Three colour classes of 15 images (about 31 train, 7 validation, 7 test)."""
    return write_colour_classes(tmp_path_factory.mktemp("colours"), 15)


@pytest.fixture(scope="module")
def finetuned(colours, tmp_path_factory):
    """A fine-tuning run with the defaults (cached path, top block, RMSprop 1e-5), kept short."""
    return transferlab.train(
        colours, strategy="finetune", out=tmp_path_factory.mktemp("runs") / "finetune", epochs=5,
        finetune={"views": 2, "epochs": 2}, quiet=True,
    )


@pytest.fixture(scope="module")
def pretrained_state() -> dict[str, torch.Tensor]:
    return create_backbone("efficientnet_lite0").state_dict()


def small_options(**changes) -> TrainOptions:
    return TrainOptions(**{"fit": FitConfig(epochs=3, patience=None), "quiet": True, **changes})


# -- augment ----------------------------------------------------------------------------------------
def test_augmented_views_are_distinct_cached_and_reproducible(colours):
    paths = sorted((colours / "red").glob("*.jpg"))[:4]
    extractor = FeatureExtractor(quiet=True)
    original = extractor.extract(paths).features
    view1 = extractor.extract(paths, augment=AugmentConfig(), view=1)
    view2 = extractor.extract(paths, augment=AugmentConfig(), view=2)
    again = FeatureExtractor(quiet=True).extract(paths, augment=AugmentConfig(), view=1)
    assert not np.allclose(view1.features, original) and not np.allclose(view1.features, view2.features)
    assert again.cache_hits == len(paths)
    np.testing.assert_array_equal(again.features, view1.features)


def test_augment_strategy_learns_and_records_its_views(colours, tmp_path):
    classifier = transferlab.train(colours, strategy="augment", out=tmp_path / "run", finetune={"views": 2}, epochs=10, quiet=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.8 and metrics["views"] == 2
    assert classifier.strategy == "augment"
    assert metrics["augment_key"] == AugmentConfig.light().key()  # light views unless told otherwise
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["options"]["fit"]["batch_size"], config["options"]["fit"]["lr"]) == (256, 1e-3)


def test_augment_strategy_takes_a_named_augmentation(colours, tmp_path):
    transferlab.train(colours, strategy="augment", out=tmp_path / "run", finetune={"views": 1}, epochs=2, augment="notebook",
                      quiet=True)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["augment_key"] == AugmentConfig().key()


def test_augment_end_to_end_trains_the_head_on_fresh_views_through_the_frozen_base(colours, tmp_path):
    classifier = transferlab.train(
        colours, strategy="augment", out=tmp_path / "run", finetune={"end_to_end": True}, epochs=8, quiet=True
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["augment_path"] == "end-to-end" and metrics["views"] is None
    assert metrics["test_accuracy"] >= 0.8
    assert classifier.backbone_state is None  # the base stays the pretrained one: a head-only model


def test_augment_is_cached_on_a_cpu_unless_told_otherwise(colours):
    result = run_strategy("augment", transferlab.dataset(colours), small_options(views=1, device="cpu"))
    assert result.extra["augment_path"] == "cached" and result.extra["views"] == 1


def test_frozen_base_features_match_the_extractor_on_unaugmented_images(colours):
    paths = sorted((colours / "red").glob("*.jpg"))[:3]
    extractor = FeatureExtractor(quiet=True)
    images, _ = decode_images(extractor, paths, "decoding", quiet=True)
    features = FrozenBaseFeatures(images, AugmentConfig.none(), extractor)(torch.arange(3), torch.Generator())
    np.testing.assert_allclose(features.numpy(), extractor.extract(paths).features, atol=1e-4, rtol=1e-3)


def test_unknown_augmentation_name_fails_before_any_image_is_read(tmp_path):
    with pytest.raises(TransferlabError, match="unknown augmentation 'strong'"):
        transferlab.train(tmp_path / "no-such-folder", strategy="augment", augment="strong", quiet=True)


def test_tta_records_the_accuracy_without_it(colours, tmp_path):
    transferlab.train(colours, strategy="augment", out=tmp_path / "run", finetune={"views": 1}, epochs=5, tta=3,
                      quiet=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["tta"] == 3
    assert 0.0 <= metrics["test_accuracy_no_tta"] <= 1.0
    assert metrics["tta_helped"] == (metrics["test_accuracy"] > metrics["test_accuracy_no_tta"])


# -- finetune ---------------------------------------------------------------------------------------
def test_cut_backbone_computes_what_the_whole_backbone_does(colours):
    spec = get_spec("efficientnet_lite0")
    model = create_backbone("efficientnet_lite0")
    prefix, tail = split_backbone(model, "blocks.6")
    images = torch.from_numpy(np.stack([
        FeatureExtractor(quiet=True).prepare(p) for p in sorted((colours / "blue").glob("*.jpg"))[:3]
    ])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        activations = Trunk(prefix, spec.mean, spec.std, pool=False).eval()(images)
        cut = TailNet(tail, tuple(activations.shape[1:])).eval()(activations)
        whole = Trunk(model, spec.mean, spec.std).eval()(images)
    assert activations.shape[1:] == (192, 7, 7)
    torch.testing.assert_close(cut, whole, rtol=1e-5, atol=1e-5)


def test_boundary_extractor_caches_float16_activations(colours):
    paths = sorted((colours / "green").glob("*.jpg"))[:3]
    result = FeatureExtractor(until="blocks.6", quiet=True).extract(paths)
    assert result.features.dtype == np.float16 and result.features.shape == (3, 192 * 7 * 7)
    assert FeatureExtractor(until="blocks.6", quiet=True).extract(paths).cache_hits == 3


def test_finetune_trains_only_the_unfrozen_block_from_the_cache(finetuned, pretrained_state):
    state = finetuned.backbone_state
    assert finetuned.metrics["finetune_path"] == "cached" and finetuned.metrics["boundary"] == "blocks.6"
    assert finetuned.metrics["finetune_improved"]
    assert state and all(k.startswith(("blocks.6.", "conv_head.", "bn2.")) for k in state)
    assert {"blocks.6.0.conv_pw.weight", "conv_head.weight", "bn2.weight"} <= set(state)
    assert any(not torch.equal(state[k], pretrained_state[k]) for k in state if k.endswith("weight"))


def test_finetune_keeps_batchnorm_statistics(finetuned, pretrained_state):
    statistics = [k for k in finetuned.backbone_state if k.endswith(("running_mean", "running_var"))]
    assert statistics
    for key in statistics:
        torch.testing.assert_close(finetuned.backbone_state[key], pretrained_state[key], rtol=0, atol=0)


def test_finetuned_run_reloads_and_predicts_with_its_own_weights(finetuned, colours):
    images = sorted((colours / "red").glob("*.jpg"))[:3]
    loaded = transferlab.load(finetuned.run_dir)
    np.testing.assert_allclose(loaded.predict_proba(images), finetuned.predict_proba(images), atol=1e-5)
    assert finetuned.metrics["test_accuracy"] >= 0.8
    assert finetuned.metrics["epochs_run"] == finetuned.metrics["phase1_epochs"] + 2


def test_cached_fine_tuning_is_deterministic(colours):
    split = transferlab.dataset(colours)
    options = small_options(views=1, finetune_epochs=1)
    first, second = run_strategy("finetune", split, options), run_strategy("finetune", split, options)
    assert first.classifier.backbone_state
    for key, value in first.classifier.backbone_state.items():
        torch.testing.assert_close(value, second.classifier.backbone_state[key], rtol=0, atol=0)


def test_fine_tuning_that_hurts_validation_is_discarded(colours):
    result = run_strategy("finetune", transferlab.dataset(colours), small_options(views=1, finetune_epochs=1, finetune_lr=0.5))
    assert result.extra["finetune_improved"] is False
    assert result.classifier.backbone_state is None  # back to the pretrained base and the phase-1 head
    assert result.history.best_epoch <= result.extra["phase1_epochs"] < len(result.history.epochs)


def test_unfreeze_all_falls_back_to_end_to_end(colours):
    split = transferlab.dataset(colours)
    result = run_strategy("finetune", split, small_options(views=1, unfreeze="all", finetune_epochs=1))
    assert result.extra["finetune_path"] == "end-to-end"
    state = result.classifier.backbone_state
    assert {"conv_stem.weight", "blocks.0.0.conv_dw.weight", "conv_head.weight"} <= set(state)
    assert not any(k.startswith("classifier.") for k in state)


def test_end_to_end_fine_tuning_is_chosen_on_request(colours):
    result = run_strategy("finetune", transferlab.dataset(colours), small_options(views=1, finetune_epochs=1, end_to_end=True))
    assert result.extra["finetune_path"] == "end-to-end"


def test_unfreeze_must_be_a_count_or_all(colours):
    with pytest.raises(TransferlabError, match="--unfreeze"):
        run_strategy("finetune", transferlab.dataset(colours), small_options(unfreeze="top"))


# -- scratch ----------------------------------------------------------------------------------------
def test_scratch_trains_the_small_convnet_and_reloads_identically(colours, tmp_path):
    classifier = transferlab.train(
        colours, strategy="scratch", out=tmp_path / "run", epochs=25, lr=1e-3, fit={"patience": None}, quiet=True
    )
    assert classifier.backbone == "small_cnn" and classifier.head_config.in_features == 32 * 6 * 6
    assert classifier.metrics["test_accuracy"] > 0.5  # three classes: chance is 1/3
    images = sorted((colours / "green").glob("*.jpg"))[:4]
    loaded = transferlab.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(images), classifier.predict_proba(images), atol=1e-6)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["pretrained"] is False
    # the default recipe: small batches, no augmentation, inputs standardised per channel
    standardised = dataclasses.replace(AugmentConfig.none(), featurewise_center=True, featurewise_std_normalization=True)
    assert classifier.metrics["augment_key"] == standardised.key() and classifier.metrics["recipe"] == "default"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["options"]["fit"]["batch_size"] == 32


def test_scratch_with_a_named_backbone_starts_from_random_weights(colours, pretrained_state):
    options = small_options(backbone="efficientnet_lite0", fit=FitConfig(epochs=1))
    result = run_strategy("scratch", transferlab.dataset(colours), options)
    state = result.classifier.backbone_state
    assert result.classifier.extractor.pretrained is False
    assert not torch.allclose(state["conv_stem.weight"], pretrained_state["conv_stem.weight"], atol=1e-2)


def test_small_convnet_has_no_pretrained_weights_to_extract_with(colours):
    with pytest.raises(TransferlabError, match="no pretrained weights"):
        transferlab.train(colours, strategy="extract", backbone="small_cnn", quiet=True)


# -- real images ------------------------------------------------------------------------------------
@pytest.mark.integration
def test_finetune_on_real_photos_beats_chance(shared, tmp_path):
    classifier = transferlab.train(
        shared / "datasets" / "hymenoptera", strategy="finetune", out=tmp_path / "run",
        split={"max_per_class": 15}, epochs=10, finetune={"views": 1, "epochs": 2}, quiet=True,
    )
    assert classifier.metrics["test_accuracy"] >= 0.75  # ants vs bees: chance is 0.5


# -- featurewise standardisation (Keras' dataset-level options) ----------------------------------------
def test_scratch_fits_featurewise_normalisation_and_keeps_it_at_prediction_and_export(colours, tmp_path):
    from transferlab.data.augment import FeaturewiseStandardizer
    from transferlab.deploy.export import export_run
    from transferlab.deploy.onnx_predict import OnnxClassifier

    config = dataclasses.replace(AugmentConfig.none(), featurewise_center=True, featurewise_std_normalization=True)
    classifier = transferlab.train(colours, strategy="scratch", augment=config, out=tmp_path / "run", epochs=2,
                                   quiet=True)
    split = transferlab.dataset(colours)  # the split train drew (same seed)
    decoded = np.stack([classifier.extractor.prepare(path) for path in split.train.paths]).astype(np.float64) / 255
    expected = FeaturewiseStandardizer(center=True, std_normalization=True).fit(decoded)
    mean, std = json.loads((tmp_path / "run" / "model.json").read_text())["normalization"]
    np.testing.assert_allclose(mean, expected.mean_, atol=1e-6)
    np.testing.assert_allclose(std, expected.std_ + FeaturewiseStandardizer.STD_GUARD, atol=1e-6)
    images = sorted((colours / "blue").glob("*.jpg"))[:3]
    loaded = transferlab.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(images), classifier.predict_proba(images), atol=1e-6)
    export_run(tmp_path / "run")
    onnx = OnnxClassifier(tmp_path / "run")
    torch_top = [p.top[0] for p in loaded.predict(images, top_k=1)]
    onnx_top = [p.top[0] for p in onnx.predict(images, top_k=1)]
    assert [label for label, _ in torch_top] == [label for label, _ in onnx_top]
    np.testing.assert_allclose([p for _, p in torch_top], [p for _, p in onnx_top], atol=1e-4)


def test_featurewise_options_are_refused_by_pretrained_strategies(colours):
    config = dataclasses.replace(AugmentConfig.light(), featurewise_center=True)
    with pytest.raises(TransferlabError, match="training from scratch only"):
        transferlab.train(colours, strategy="augment", augment=config, quiet=True)


def test_zca_whitening_is_refused_at_sizes_it_cannot_handle(colours):
    config = dataclasses.replace(AugmentConfig.none(), zca_whitening=True)
    with pytest.raises(TransferlabError, match="ZCA whitening needs images of at most"):
        transferlab.train(colours, strategy="scratch", augment=config, epochs=1, quiet=True)


def test_tta_views_are_not_mirrored_when_training_ruled_flips_out(colours, tmp_path):
    transferlab.train(colours, strategy="augment", augment="light-noflip", out=tmp_path / "run",
                      finetune={"views": 1}, epochs=2, quiet=True)
    classifier = transferlab.load(tmp_path / "run")
    assert classifier.tta_mirror is False
    paths = sorted((colours / "red").glob("*.jpg"))[:4]
    views, _, _, _ = classifier.view_outputs(paths, tta=2)
    unmirrored = classifier.extractor.extract(paths, augment=AugmentConfig.light_noflip(), view=1).features
    mirrored = classifier.extractor.extract(paths, augment=AugmentConfig.light(), view=1).features
    assert not np.allclose(unmirrored, mirrored)  # the two view sets differ, so the check below can fail
    np.testing.assert_allclose(views[1], classifier.probabilities_from_features(unmirrored), atol=1e-6)


def test_tta_views_may_be_mirrored_by_default(colours, tmp_path):
    transferlab.train(colours, strategy="augment", out=tmp_path / "run", finetune={"views": 1}, epochs=2, quiet=True)
    assert transferlab.load(tmp_path / "run").tta_mirror is True
