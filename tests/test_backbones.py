"""Tests for transferlab.backbones.registry: registry, weights sources (embedded, download, file), preprocessing, ImageNet."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from weights_server import WeightsServer, refused_url

from transferlab.backbones import registry as backbones
from transferlab.backbones.imagenet import imagenet_labels, predict_imagenet
from transferlab.backbones.registry import (
    BackboneSpec,
    backbone_status,
    create_backbone,
    get_spec,
    list_specs,
    preprocess,
    register,
    weights_fingerprint,
    weights_path,
)
from transferlab.core.errors import TransferlabError

EMBEDDED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
DOWNLOADED = [
    "vgg16", "vgg19", "resnet50", "inception_v3", "inception_resnet_v2", "xception",
    "mobilenet", "mobilenet_v2", "convnext_tiny", "vit_small",
]
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache so nothing touches ~/.cache."""
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_spec(monkeypatch: pytest.MonkeyPatch) -> BackboneSpec:
    """A registered spec on timm's tiny test network, removed from the registry after the test."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    spec = BackboneSpec(
        name="tiny", timm_name="test_efficientnet", input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        interpolation="bilinear", crop_pct=1.0, weights_url=refused_url(), embedded_package=None,
        description="timm's test network",
    )
    register(spec)
    return spec


def _use_url(spec: BackboneSpec, url: str) -> BackboneSpec:
    register(dataclasses.replace(spec, weights_url=url))
    return get_spec(spec.name)


def _save_random_weights(spec: BackboneSpec, path: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state_dict = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state_dict, path)
    else:
        torch.save(state_dict, path)
    return state_dict


def _assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_registry_lists_every_backbone_with_its_status():
    assert [spec.name for spec in list_specs()] == EMBEDDED + DOWNLOADED + ["small_cnn", "small_cnn_224"]
    # the scratch baselines have no pretrained weights
    assert backbone_status("small_cnn") == backbone_status("small_cnn_224") == "random init"
    assert {name: backbone_status(name) for name in EMBEDDED} == dict.fromkeys(EMBEDDED, "embedded")
    assert {name: backbone_status(name) for name in DOWNLOADED} == dict.fromkeys(DOWNLOADED, "needs download")


def test_unknown_backbone_error_lists_known_names():
    with pytest.raises(TransferlabError, match="unknown backbone 'resnet51'") as error:
        get_spec("resnet51")
    assert all(name in error.value.hint for name in EMBEDDED + DOWNLOADED)


def test_specs_take_preprocessing_and_weights_url_from_timm():
    lite0, lite1, vgg16 = get_spec("efficientnet_lite0"), get_spec("efficientnet_lite1"), get_spec("vgg16")
    assert (lite0.input_size, lite0.mean, lite0.std, lite0.interpolation) == (224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert (lite0.crop_pct, lite0.resize_size) == (0.875, 256)
    assert (lite1.input_size, lite1.resize_size) == (240, 272)
    assert vgg16.mean == (0.485, 0.456, 0.406) and vgg16.interpolation == "bilinear"
    assert vgg16.weights_url == "https://huggingface.co/timm/vgg16.tv_in1k/resolve/main/model.safetensors"


@pytest.mark.parametrize("spec", [s for s in list_specs() if s.builder is None], ids=lambda s: s.name)
def test_written_out_specs_match_timm_pretrained_config(spec):
    assert spec == backbones.spec_from_timm(spec.name, spec.timm_name, spec.description, spec.embedded_package)


def test_importing_the_train_path_does_not_import_timm_or_torchvision():
    # a warm run never builds a network; importing timm's model zoo costs seconds (see transferlab.backbones.registry)
    code = "import sys, transferlab.api, transferlab.cli.app; print(sorted({'timm', 'torchvision'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_weights_map_in_order_onto_timm_model(name: str):
    package_file = backbones._embedded_file(get_spec(name))
    source = torch.load(package_file, map_location="cpu", weights_only=True)
    model = create_backbone(name)
    assert not model.training and model.get_classifier().out_features == 1000
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(model.state_dict().values(), source.values()))


def test_embedded_weights_of_another_architecture_raise_clear_error(tmp_path, monkeypatch, tiny_spec):
    package = tmp_path / "site" / "wrong_weights_package"
    package.mkdir(parents=True)
    torch.save(timm.create_model("test_resnet").state_dict(), package / "weights.pth")
    (package / "__init__.py").write_text(
        "import os\n"
        "class WrongModelFile:\n"
        "    @staticmethod\n"
        "    def get_model_file_path():\n"
        "        return os.path.join(os.path.dirname(__file__), 'weights.pth')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    register(dataclasses.replace(tiny_spec, embedded_package="wrong_weights_package"))
    with pytest.raises(TransferlabError, match="hold 92 tensors but EfficientNet has 88") as error:
        create_backbone("tiny")
    assert "reinstall" in error.value.hint


def test_lite0_recognises_cat_and_espresso_photos():
    skimage_data = pytest.importorskip("skimage.data")
    chelsea, coffee = predict_imagenet(
        [Image.fromarray(skimage_data.chelsea()), Image.fromarray(skimage_data.coffee())], top_k=3
    )
    assert chelsea[0][0] in CAT_CLASSES and "Egyptian cat" in [label for label, _ in chelsea]
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.5
    assert all(p1 >= p2 for p1, p2 in zip([p for _, p in chelsea], [p for _, p in chelsea][1:]))


def test_imagenet_labels_are_1000_readable_names():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert (labels[0], labels[285], labels[967]) == ("tench", "Egyptian cat", "espresso")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_preprocess_gives_uint8_center_crop_of_input_size(mode: str):
    image = Image.new(mode, (640, 480))
    pixels = preprocess(image, get_spec("efficientnet_lite1"))
    assert pixels.shape == (240, 240, 3) and pixels.dtype == np.uint8


def test_preprocess_keeps_the_center_of_the_image():
    image = np.zeros((256, 320, 3), dtype=np.uint8)  # shorter side is already resize_size (256): no resampling
    image[16:240, 48:272] = 255  # exactly the centered 224 x 224 window
    pixels = preprocess(Image.fromarray(image), get_spec("efficientnet_lite0"))
    assert pixels.min() == 255


def test_missing_weights_are_downloaded_once_into_the_cache(tmp_path, tiny_spec, cache_dir):
    served = _save_random_weights(tiny_spec, tmp_path / "served" / "tiny.safetensors", seed=1)
    with WeightsServer(tmp_path / "served") as server:
        spec = _use_url(tiny_spec, server.url("tiny.safetensors"))
        assert backbone_status("tiny") == "needs download"
        _assert_same_weights(create_backbone("tiny"), served)
        assert backbone_status("tiny") == "cached"
        assert weights_path(spec) == cache_dir / "weights" / "tiny.safetensors"
        _assert_same_weights(create_backbone("tiny"), served)
        assert server.requested == ["/tiny.safetensors"]
    assert sorted(path.name for path in weights_path(spec).parent.iterdir()) == ["tiny.safetensors"]


@pytest.mark.parametrize("failure", ["404", "refused"])
def test_failed_download_raises_error_with_hint(tmp_path, tiny_spec, failure):
    (tmp_path / "served").mkdir()
    with WeightsServer(tmp_path / "served") as server:
        url = server.url("missing.safetensors") if failure == "404" else refused_url()
        spec = _use_url(tiny_spec, url)
        with pytest.raises(TransferlabError, match=f"could not download weights for tiny from {url}: ") as error:
            create_backbone("tiny")
    assert ("HTTP 404" if failure == "404" else "refused") in error.value.message
    assert "--weights FILE" in error.value.hint and str(weights_path(spec)) in error.value.hint
    assert not weights_path(spec).parent.exists() or not any(weights_path(spec).parent.iterdir())


def test_download_that_is_not_safetensors_is_not_cached(tmp_path, tiny_spec):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "login.html").write_text("<html>please sign in</html>")
    with WeightsServer(tmp_path / "served") as server:
        spec = _use_url(tiny_spec, server.url("login.html"))
        with pytest.raises(TransferlabError, match="did not send a safetensors file"):
            create_backbone("tiny")
    assert list(weights_path(spec).parent.iterdir()) == []


def test_file_placed_at_weights_path_is_used_offline(tiny_spec):
    placed = _save_random_weights(tiny_spec, weights_path(tiny_spec), seed=2)
    assert backbone_status("tiny") == "cached"
    _assert_same_weights(create_backbone("tiny"), placed)  # tiny_spec's URL refuses connections


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_explicit_weights_file_wins_over_other_sources(tmp_path, tiny_spec, suffix):
    _save_random_weights(tiny_spec, weights_path(tiny_spec), seed=3)
    explicit = _save_random_weights(tiny_spec, tmp_path / f"mine{suffix}", seed=4)
    _assert_same_weights(create_backbone("tiny", weights=tmp_path / f"mine{suffix}"), explicit)


def test_explicit_weights_of_another_architecture_raise_clear_error(tmp_path, tiny_spec):
    save_file(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(TransferlabError, match="cannot load weights .*resnet.safetensors into tiny") as error:
        create_backbone("tiny", weights=tmp_path / "resnet.safetensors")
    assert "same architecture" in error.value.hint


def test_missing_explicit_weights_file_raises_clear_error(tmp_path, tiny_spec):
    with pytest.raises(TransferlabError, match="weights file not found"):
        create_backbone("tiny", weights=tmp_path / "nope.safetensors")


def test_pretrained_false_gives_random_weights_without_download(tiny_spec):
    torch.manual_seed(5)
    expected = timm.create_model(tiny_spec.timm_name).state_dict()
    torch.manual_seed(5)
    _assert_same_weights(create_backbone("tiny", pretrained=False), expected)  # the URL refuses connections
    assert backbone_status("tiny") == "needs download"


def test_weights_fingerprint_is_stable_and_differs_between_files(tmp_path, tiny_spec):
    for seed in (6, 7):
        _save_random_weights(tiny_spec, tmp_path / f"w{seed}.safetensors", seed=seed)
    first = weights_fingerprint("tiny", tmp_path / "w6.safetensors")
    assert first == weights_fingerprint("tiny", tmp_path / "w6.safetensors")
    assert first != weights_fingerprint("tiny", tmp_path / "w7.safetensors")
    assert weights_fingerprint("efficientnet_lite0") != weights_fingerprint("efficientnet_lite1")
    (tmp_path / "w6.safetensors").write_bytes((tmp_path / "w7.safetensors").read_bytes())  # replaced file
    assert weights_fingerprint("tiny", tmp_path / "w6.safetensors") == weights_fingerprint(
        "tiny", tmp_path / "w7.safetensors"
    )
