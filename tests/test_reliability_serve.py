"""The server under hostile or careless use: huge-dimension uploads, floods of them, foreign Host headers, and
what the served pages reveal or claim."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import make_colour_run
from fastapi.testclient import TestClient
from PIL import Image

import transferlab.deploy.serve as serve_module
from transferlab.api import load
from transferlab.deploy.serve import create_app, hosts_for
from transferlab.model.classifier import Classifier
from transferlab.reports.report import write_report

LOCAL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_colour_run(tmp_path_factory.mktemp("serve-reliability"), epochs=3)


@pytest.fixture(scope="module")
def small_cap_app(run_dir):
    return create_app(run_dir, max_upload_megapixels=0.01, max_decodes=2)  # 10,000 pixels: 100x100 fits


@pytest.fixture(scope="module")
def default_client(run_dir):
    return TestClient(create_app(run_dir), base_url=LOCAL)


@pytest.fixture(scope="module")
def client(small_cap_app):
    return TestClient(small_cap_app, base_url=LOCAL)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def post(client, data: bytes):
    return client.post("/api/predict", files={"file": ("upload.png", data, "image/png")})


def test_huge_dimension_upload_is_refused_before_decoding(client, monkeypatch):
    data = png(200, 100)  # 20,000 pixels, twice the cap, in a few hundred bytes
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))  # any decode is recorded
    response = post(client, data)
    assert response.status_code == 400
    assert "too large (200x100 = 20,000 pixels, limit 10,000)" in response.json()["detail"]
    assert decoded == []


def test_size_check_of_an_accepted_upload_decodes_nothing(monkeypatch):
    """The size check runs before the decode limit is taken, so it must read the header only (for PNG too)."""
    data = png(100, 100)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    assert serve_module.checked_upload(data, 1_000_000) == (100, 100)
    assert decoded == []


def test_upload_within_the_pixel_cap_is_classified(client):
    response = post(client, png(100, 100))
    assert response.status_code == 200 and (response.json()["width"], response.json()["height"]) == (100, 100)


def test_default_pixel_cap_refuses_a_10000_by_10000_png_far_below_the_training_limit(default_client):
    from transferlab.data.decoding import MAX_IMAGE_PIXELS

    assert serve_module.DEFAULT_MAX_UPLOAD_MEGAPIXELS * 1e6 <= MAX_IMAGE_PIXELS / 2
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")  # 1-bit: ~12 MB to build here, ~100 KB on the wire
    response = post(default_client, buffer.getvalue())
    assert response.status_code == 400 and "limit 40,000,000" in response.json()["detail"]


def test_concurrent_uploads_are_decoded_at_most_max_decodes_at_once(small_cap_app, monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()
    real_predict = Classifier.predict  # where an upload is decoded, then classified

    def slow_predict(self, images, top_k=5):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)  # long enough for every request to be waiting at once
        with lock:
            active[0] -= 1
        return real_predict(self, images, top_k=top_k)

    monkeypatch.setattr(Classifier, "predict", slow_predict)

    async def flood() -> list[int]:
        transport = httpx.ASGITransport(app=small_cap_app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            responses = await asyncio.gather(*(client.post("/api/predict", files={"file": ("a.png", png(64, 64))})
                                               for _ in range(8)))
        return [response.status_code for response in responses]

    assert asyncio.run(flood()) == [200] * 8
    assert peak[0] == 2


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.20:8000"])
def test_server_rejects_foreign_host_header(client, host):
    response = client.get("/api/model", headers={"host": host})
    assert response.status_code == 400 and "classes" not in response.text


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "localhost"])
def test_server_answers_its_own_loopback_names(client, host):
    assert client.get("/api/model", headers={"host": host}).status_code == 200


def test_host_check_follows_the_bound_address():
    assert hosts_for("127.0.0.1") == hosts_for("localhost") == serve_module.LOOPBACK_HOSTS
    assert hosts_for("192.168.1.20") == ("192.168.1.20",)
    assert hosts_for("0.0.0.0") is None  # exposed on purpose to every interface: any name the network uses


def test_served_report_shows_no_absolute_data_or_run_path(client, run_dir):
    write_report(run_dir)
    data_root = json.loads((run_dir / "config.json").read_text())["data"]
    assert data_root in (run_dir / "report.html").read_text()  # the file on disk keeps it, for its owner
    served = client.get("/report/")
    assert served.status_code == 200 and "<html" in served.text.lower()
    assert data_root not in served.text and str(run_dir) not in served.text



def test_served_jpeg_gets_the_same_probabilities_as_predict(default_client, run_dir, tmp_path):
    """A photo-sized JPEG is decoded at reduced scale by `predict` (libjpeg's draft); the server must do the same."""
    rng = np.random.default_rng(3)
    pixels = np.clip(np.array((40, 180, 60)) + rng.normal(0, 40, (900, 1200, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=85)
    served = default_client.post("/api/predict", files={"file": ("photo.jpg", path.read_bytes())}, params={"top_k": 3})
    classifier = load(run_dir)
    expected = classifier.predict([path], top_k=3)[0].top
    assert served.status_code == 200 and (served.json()["width"], served.json()["height"]) == (1200, 900)
    assert [row["label"] for row in served.json()["top"]] == [label for label, _ in expected]
    served_probabilities = [row["probability"] for row in served.json()["top"]]
    assert served_probabilities == pytest.approx([p for _, p in expected], abs=1e-6)
    full_scale = classifier.predict([Image.open(path)], top_k=3)[0].top  # what the server computed before
    assert [p for _, p in full_scale] != pytest.approx(served_probabilities, abs=1e-6)
