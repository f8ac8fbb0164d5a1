"""Shared fixtures: generated image folders, the ../shared data, an isolated feature cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (220, 210, 40)}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """One feature/ONNX cache per test session, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("transferlab-cache")
    os.environ["TRANSFERLAB_CACHE"] = str(cache)
    return cache


def write_colour_images(folder: Path, colour: tuple[int, int, int], n: int, size: int = 48, seed: int = 0) -> list[Path]:
    """Noisy solid-colour JPEGs with a random dark square: easy to tell apart by colour, each file distinct."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        pixels[y : y + size // 4, x : x + size // 4] //= 3
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    """Three classes of 15 generated images each, as class subfolders."""
    return write_colour_classes(tmp_path / "colours", 15)


def write_colour_classes(root: Path, n: int) -> Path:
    """red/, green/ and blue/ under `root`, `n` generated images each; returns root."""
    for seed, name in enumerate(("red", "green", "blue")):
        write_colour_images(root / name, COLOURS[name], n, seed=seed)
    return root


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}: integration data absent")
    return SHARED


def folder_contents(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative path -> bytes): a folder's state, to compare before and after."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_colour_run(root: Path, epochs: int = 15) -> Path:
    """Train a small run on red/green/blue images under `root` (data in root/data); returns root/run."""
    import transferlab

    write_colour_classes(root / "data", 15)
    transferlab.train(root / "data", out=root / "run", epochs=epochs, lr=3e-3, quiet=True)
    return root / "run"


@pytest.fixture(scope="session")
def cluster():
    """A two-node Ray cluster on this machine (ray.cluster_utils.Cluster, one CPU a node), joined by this process;
    (cluster, [worker node]). Started once a session: a cluster takes seconds to start."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        yield cluster, [worker]
    finally:
        ray.shutdown()
        cluster.shutdown()


def link_hymenoptera(shared: Path, root: Path, per_class: int) -> Path:
    """ants/ and bees/ under `root`, the first `per_class` real training photos of each (links into ../shared)."""
    source = shared / "datasets" / "hymenoptera" / "train"
    for cls in ("ants", "bees"):
        (root / cls).mkdir()
        for photo in sorted((source / cls).glob("*.jpg"))[:per_class]:
            (root / cls / photo.name).symlink_to(photo)
    return root
