"""The Ray engine on a two-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster, one CPU a
node, every address on loopback), with real photos from ../shared: the cluster's features are the local ones,
under the same cache keys, through a lost node too; bulk predictions are local `predict`'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import link_hymenoptera
from typer.testing import CliRunner

import transferlab
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError
from transferlab.core.files import bytes_digest, file_digest
from transferlab.features.extractor import FeatureExtractor

pytestmark = [pytest.mark.ray, pytest.mark.integration]
ray = pytest.importorskip("ray")
PER_CLASS = 20
BROKEN = "ants/broken.jpg"  # passes the cheap header check, fails to decode


@pytest.fixture(scope="module")
def photos(shared, tmp_path_factory) -> Path:
    """ants/ and bees/, PER_CLASS real photos each (links to ../shared), plus one truncated JPEG."""
    root = link_hymenoptera(shared, tmp_path_factory.mktemp("photos"), PER_CLASS)
    whole = next(iter(sorted((root / "ants").glob("*.jpg")))).read_bytes()
    (root / BROKEN).write_bytes(whole[: len(whole) // 3])
    return root


def every_path(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*.jpg"))


def test_bytes_digest_is_the_file_digest(photos):
    path = every_path(photos)[0]
    assert bytes_digest(path.read_bytes()) == file_digest(path)


def test_local_imports_do_not_import_ray():
    code = ("import sys, transferlab.cli.app, transferlab.api, transferlab.runs.pipeline, transferlab.engines.embed, "
            "transferlab.engines.local, transferlab.engines.bulk_predict; print('ray' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert shown.stdout.strip() == "False"


@pytest.mark.parametrize("device, cluster_gpus, gpu", [
    ("cuda", 0, True), ("cpu", 1, False), ("auto", 1, True), ("auto", 0, False)])
def test_ray_paths_use_a_gpu_when_asked_or_when_the_cluster_has_one(device, cluster_gpus, gpu, monkeypatch):
    from transferlab.engines import ray_extraction as ray_engine
    from transferlab.engines import ray_training as ray_train

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, **({"GPU": 1.0} if cluster_gpus else {})})
    assert ray_engine.use_gpu(device) is gpu
    assert ray_train.use_gpu is ray_engine.use_gpu  # one rule for extraction and training


def test_a_shipped_extractor_runs_where_the_workers_run_it(tmp_path):
    from transferlab.engines import ray_extraction as ray_engine

    extractor = FeatureExtractor(device="cpu", cache_dir=tmp_path, quiet=True)
    on_gpu_workers = ray_engine.portable(extractor, "cuda")
    assert (on_gpu_workers.device, on_gpu_workers.runtime) == ("cuda", "torch")
    assert (extractor.device, extractor.runtime) == ("cpu", "onnx")
    assert ray_engine.portable(extractor, "cpu").runtime == "onnx"


def test_ray_features_equal_local_features_under_the_same_cache_keys(cluster, photos, tmp_path):
    from transferlab.engines import ray_extraction as ray_engine

    paths = every_path(photos)
    FeatureExtractor(cache_dir=tmp_path / "ray", quiet=True).extract(paths[:10])  # cached by a local run before
    on_ray = FeatureExtractor(cache_dir=tmp_path / "ray", quiet=True)
    done = ray_engine.extract_to_cache(on_ray, paths)
    assert (done.cache_hits, done.computed) == (10, len(paths) - 11)  # what a local run cached is not sent
    assert done.failed == {photos / BROKEN: "truncated image"}
    afterwards = FeatureExtractor(cache_dir=tmp_path / "ray", quiet=True).extract(paths)  # a local run afterwards
    assert afterwards.cache_hits == len(paths) - 1  # extracts nothing but the broken file (and fails on it again)
    assert afterwards.failed == done.failed
    local = FeatureExtractor(cache_dir=tmp_path / "local", quiet=True).extract(paths)
    np.testing.assert_allclose(afterwards.features, local.features, atol=1e-4)
    assert ray_engine.extract_to_cache(on_ray, paths).computed == 0  # cached keys are never sent again


def test_a_cpu_trunk_actor_reads_hashes_and_decodes_batches_of_paths_itself(photos, tmp_path):
    from transferlab.engines import ray_extraction as ray_engine
    from transferlab.features.extractor import cache_key

    paths = every_path(photos)[:5] + [photos / BROKEN]
    extractor = FeatureExtractor(cache_dir=tmp_path, quiet=True)
    actor = ray_engine.TrunkActor(ray_engine.portable(extractor), [None], decode={"augment": None, "view": 0})
    out = actor({"path": np.array([str(p) for p in paths], dtype=object)})  # paths in, no decoding stage before
    assert list(out["error"]) == [""] * 5 + ["truncated image"]
    assert list(out["key"][:5]) == [cache_key(file_digest(p)) for p in paths[:5]]
    np.testing.assert_allclose(out["feature"][:5], extractor.extract(paths).features, atol=1e-4)


def test_a_lost_worker_node_still_gives_identical_features(cluster, photos, tmp_path):
    from transferlab.engines import ray_extraction as ray_engine

    ray_cluster, workers = cluster
    paths = every_path(photos)
    extractor = FeatureExtractor(cache_dir=tmp_path / "ray", quiet=True, batch_size=4)
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(done=ray_engine.extract_to_cache(extractor, paths)))
    job.start()
    deadline = time.monotonic() + 120
    while not outcome and len(extractor.cache) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # until the first features arrive: the job is under way
    ray_cluster.remove_node(workers.pop())
    workers.append(ray_cluster.add_node(num_cpus=1))
    job.join(timeout=240)
    assert not job.is_alive() and outcome["done"].failed == {photos / BROKEN: "truncated image"}
    local = FeatureExtractor(cache_dir=tmp_path / "local", quiet=True).extract(paths)
    from_ray = FeatureExtractor(cache_dir=tmp_path / "ray", quiet=True).extract(paths)
    assert from_ray.cache_hits == len(paths) - 1
    np.testing.assert_allclose(from_ray.features, local.features, atol=1e-4)


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    transferlab.train(photos, out=out, epochs=3, split=(0.7, 0.3, 0.0), quiet=True)
    return out


def test_train_with_the_ray_engine_writes_the_local_run(cluster, photos, trained, tmp_path):
    run = tmp_path / "ray-run"
    transferlab.train(photos, out=run, epochs=3, split=(0.7, 0.3, 0.0), quiet=True,
                      engine={"name": "ray", "ray_address": cluster[0].address}, trunk={"cache_dir": tmp_path / "cache"})
    assert (run / "skipped.csv").read_text() == (trained / "skipped.csv").read_text()
    assert "broken.jpg" in (run / "skipped.csv").read_text()
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, trained))
    assert ours["test_accuracy"] == pytest.approx(theirs["test_accuracy"])
    assert ours["test"]["confusion_matrix"] == theirs["test"]["confusion_matrix"]


def bulk(run: Path, photos: Path, out: Path, top_k: int = 2):
    from transferlab.engines.bulk_predict import predict_folder

    return predict_folder(run, every_path(photos), out, top_k=top_k, quiet=True)


def test_bulk_predictions_equal_local_predict(cluster, photos, trained, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(bulk(trained, photos, tmp_path / "predictions.parquet")).to_pylist()
    local = transferlab.load(trained).predict(every_path(photos), top_k=2)
    assert [row["path"] for row in table] == [p.source for p in local]
    for row, expected in zip(table, local):
        assert row["error"] == (expected.error or "")
        if not expected.error:
            assert [row["label_1"], row["label_2"]] == [label for label, _ in expected.top]
            np.testing.assert_allclose([row["probability_1"], row["probability_2"]], [p for _, p in expected.top], atol=1e-4)
    assert not (tmp_path / "predictions.parquet.parts").exists()


def test_a_bulk_prediction_rerun_does_only_the_images_not_yet_written(cluster, photos, trained, tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = tmp_path / "predictions.csv"
    parts = tmp_path / "predictions.csv.parts"
    parts.mkdir()
    first = str(every_path(photos)[0])  # as if a crashed run had written it: a sentinel, never recomputed
    pq.write_table(pa.table({"path": [first], "label_1": ["sentinel"], "probability_1": [0.5],
                             "label_2": ["sentinel"], "probability_2": [0.5], "error": [""]}), parts / "part-000000.parquet")
    rows = pacsv.read_csv(bulk(trained, photos, out)).to_pylist()
    assert len(rows) == len(every_path(photos))
    assert [row["label_1"] for row in rows if row["path"] == first] == ["sentinel"]
    assert {row["label_1"] for row in rows if row["path"] != first} <= {"ants", "bees", None, ""}


def test_embed_writes_path_label_split_and_feature_columns(cluster, photos, tmp_path):
    import pyarrow.parquet as pq

    result = runner().invoke(app, ["--quiet", "embed", str(photos), "--out", str(tmp_path / "features.parquet"),
                                   "--split", "0.7,0.3,0", "--engine", "ray", "--ray-address", cluster[0].address])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "features.parquet")
    assert table.column_names == ["path", "label", "split", "feature"]
    assert table.num_rows == 2 * PER_CLASS and set(table.column("split").to_pylist()) == {"train", "validation"}
    assert len(table.column("feature")[0]) == 1280
    assert "broken.jpg" in (tmp_path / "features.skipped.csv").read_text()


def runner() -> CliRunner:
    return CliRunner()


def test_unknown_engine_is_one_clear_error(photos):
    result = runner().invoke(app, ["train", str(photos), "--engine", "spark"])
    assert isinstance(result.exception, TransferlabError) and "unknown engine 'spark'" in result.exception.message


def test_ray_engine_refuses_strategies_without_frozen_features(photos):
    with pytest.raises(TransferlabError, match="does not use them"):
        transferlab.train(photos, strategy="augment", finetune={"end_to_end": True}, engine="ray")


def test_bulk_prediction_refuses_an_output_that_is_neither_parquet_nor_csv(trained, photos, tmp_path):
    result = runner().invoke(app, ["predict", str(trained), str(photos), "--engine", "ray", "--out", str(tmp_path / "p.txt")])
    assert isinstance(result.exception, TransferlabError) and ".parquet or .csv" in result.exception.message
