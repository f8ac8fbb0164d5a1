"""POST /api/explain: the heatmap of an upload, with /api/predict's limits and errors."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_colour_run
from test_serve import TINY_CAP_MB, jpeg_of, png_claiming_size
from transferlab.deploy.serve import create_app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_colour_run(tmp_path_factory.mktemp("serve-explain"), epochs=5)


@pytest.fixture(scope="module")
def client(run_dir):
    return TestClient(create_app(run_dir, max_upload_mb=TINY_CAP_MB), base_url="http://127.0.0.1:8000")


def explain(client, data: bytes):
    return client.post("/api/explain", files={"file": ("photo.jpg", data, "image/jpeg")})


def test_explain_endpoint_returns_the_heatmap_overlay_of_an_image(client, run_dir):
    response = explain(client, jpeg_of(run_dir, "green"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == "green" and 0.5 < body["probability"] <= 1.0
    prefix = "data:image/png;base64,"
    assert body["overlay"].startswith(prefix)
    assert Image.open(io.BytesIO(base64.b64decode(body["overlay"][len(prefix):]))).size == (224, 224)


def test_explain_endpoint_refuses_a_bad_upload_as_predict_does(client):
    response = explain(client, b"just some text, not pixels\n")
    assert response.status_code == 400 and response.json()["detail"]


def test_explain_endpoint_refuses_huge_images_as_predict_does(client):
    assert explain(client, b"\xff" * 20_000).status_code == 413
    response = explain(client, png_claiming_size(20_000, 20_000))
    assert response.status_code == 400 and "too large" in response.json()["detail"]
