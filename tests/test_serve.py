"""`transferlab serve`: the JSON API, upload limits, content checks and the run-file allowlist."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import pytest
from conftest import make_colour_run
from fastapi.testclient import TestClient
from PIL import Image

import transferlab
from transferlab.core.errors import TransferlabError
from transferlab.deploy.serve import create_app

TINY_CAP_MB = 0.01  # 10 KiB: a generated 48 px JPEG (~2 KB) fits, 20 KB does not


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_colour_run(tmp_path_factory.mktemp("serve"), epochs=5)


@pytest.fixture(scope="module")
def app(run_dir):
    return create_app(run_dir, max_upload_mb=TINY_CAP_MB)


@pytest.fixture(scope="module")
def client(app):
    # raises on any server-side exception, so a would-be 500 fails the test
    return TestClient(app, base_url="http://127.0.0.1:8000")


def jpeg_of(run_dir, colour: str) -> bytes:
    return next((run_dir.parent / "data" / colour).glob("*.jpg")).read_bytes()


def upload(client, data: bytes, name: str = "photo.jpg", **params):
    return client.post("/api/predict", files={"file": (name, data, "image/jpeg")}, params=params)


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (a decompression bomb's header, without the pixels)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def test_health_says_ok(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_model_endpoint_describes_labels_backbone_and_metrics(client):
    model = client.get("/api/model").json()
    assert model["labels"] == ["blue", "green", "red"]
    assert model["backbone"] == "efficientnet_lite0" and model["runtime"] == "torch"
    assert 0 <= model["metrics"]["test_accuracy"] <= 1 and model["metrics"]["n_classes"] == 3
    assert model["max_upload_mb"] == TINY_CAP_MB


def test_upload_returns_top_k_labels_with_probabilities(client, run_dir):
    response = upload(client, jpeg_of(run_dir, "green"), top_k=2)
    assert response.status_code == 200
    body = response.json()
    assert [row["label"] for row in body["top"]][0] == "green" and len(body["top"]) == 2
    assert body["top"][0]["probability"] >= body["top"][1]["probability"] > 0
    assert (body["filename"], body["width"], body["height"]) == ("photo.jpg", 48, 48)


def test_image_is_recognised_by_content_not_by_name(client, run_dir):
    response = upload(client, jpeg_of(run_dir, "red"), name="notes.txt")
    assert response.status_code == 200 and response.json()["top"][0]["label"] == "red"


@pytest.mark.parametrize("top_k", [0, 1000, "many"])
def test_invalid_top_k_is_rejected(client, run_dir, top_k):
    assert upload(client, jpeg_of(run_dir, "red"), top_k=top_k).status_code == 422


def test_truncated_jpeg_is_a_400_with_detail(client, run_dir):
    data = jpeg_of(run_dir, "blue")
    response = upload(client, data[: len(data) // 2])
    assert response.status_code == 400 and response.json()["detail"] == "truncated image"


def test_text_file_named_jpg_is_a_400(client):
    response = upload(client, b"just some text, not pixels\n")
    assert response.status_code == 400 and "not an image" in response.json()["detail"]


def test_empty_upload_is_a_400(client):
    response = upload(client, b"")
    assert response.status_code == 400 and "empty" in response.json()["detail"]


def test_decompression_bomb_header_is_a_400(client):
    response = upload(client, png_claiming_size(30_000, 30_000), name="bomb.png")
    assert response.status_code == 400 and "too large" in response.json()["detail"]


def test_extremely_elongated_image_is_a_400(client):
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 2), "red").save(buffer, "PNG")
    response = upload(client, buffer.getvalue(), name="strip.png")
    assert response.status_code == 400 and "elongated" in response.json()["detail"]


def test_missing_file_field_is_a_422(client):
    response = client.post("/api/predict", data={"image": "x"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "file"]


def test_malformed_multipart_body_is_a_400(client):
    response = client.post("/api/predict", content=b"garbage",
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 400 and "detail" in response.json()


def test_upload_over_the_cap_is_a_413(client):
    assert upload(client, b"\xff" * 20_000).status_code == 413


def test_streamed_upload_is_stopped_once_over_the_cap(app):
    """No Content-Length (chunked): the server answers 413 after reading just past the cap, not the whole body."""
    chunk, chunks = b"-" * 1024, 200
    head = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n\r\n"
    pending = [head] + [chunk] * chunks
    sent: list[dict] = []

    async def receive() -> dict:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert chunks - len(pending) <= TINY_CAP_MB * 1024 + 2  # read at most the cap's worth of 1 KiB chunks


def test_report_is_404_until_written_then_served_with_its_plots(client, run_dir):
    (run_dir / "report.html").unlink(missing_ok=True)
    missing = client.get("/report/")
    assert missing.status_code == 404 and "no report.html" in missing.json()["detail"]
    assert client.get("/api/model").json()["report"] is False
    (run_dir / "report.html").write_text('<html><body><img src="accuracy.png"></body></html>')
    assert client.get("/report", follow_redirects=False).headers["location"] == "/report/"
    assert "accuracy.png" in client.get("/report").text
    assert client.get("/report/accuracy.png").headers["content-type"] == "image/png"
    assert client.get("/api/model").json()["report"] is True


@pytest.mark.parametrize("name", ["model.json", "config.json", "model.safetensors", "split.csv", "nothing.png"])
def test_run_files_outside_the_allowlist_are_404(client, name):
    assert client.get(f"/report/{name}").status_code == 404


@pytest.mark.parametrize("path", [
    "/report/../model.json", "/report/%2e%2e/model.json", "/report/%2e%2e%2fmodel.json", "/report/..%2Fconfig.json",
    "/report/%2e%2e", "/report/..%2f..%2f..%2fetc%2fpasswd", "/static/../serve.py", "/static/%2e%2e/serve.py",
    "/static/..%2fserve.py", "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
])
def test_path_traversal_is_refused(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "classes" not in response.text and "def " not in response.text


def test_symlinked_plot_pointing_outside_the_run_is_refused(client, run_dir, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (run_dir / "leak.png").symlink_to(secret)
    assert client.get("/report/leak.png").status_code == 404


def test_web_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "/api/predict" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(TransferlabError, match="not a transferlab run folder"):
        create_app(tmp_path)


def test_onnx_runtime_serves_the_exported_model(run_dir):
    from transferlab.deploy.export import export_float

    export_float(transferlab.load(run_dir), run_dir / "model.onnx")
    client = TestClient(create_app(run_dir, runtime="onnx"), base_url="http://127.0.0.1:8000")
    assert client.get("/api/model").json()["runtime"] == "onnx"
    response = upload(client, jpeg_of(run_dir, "blue"))
    assert response.status_code == 200 and response.json()["top"][0]["label"] == "blue"


@pytest.mark.integration
def test_real_photo_upload_is_classified_under_the_default_cap(run_dir, shared):
    photo = sorted((shared / "datasets" / "hymenoptera" / "val" / "bees").glob("*.jpg"))[0]
    client = TestClient(create_app(run_dir), base_url="http://127.0.0.1:8000")
    response = upload(client, photo.read_bytes(), name=photo.name)
    assert response.status_code == 200
    body = response.json()
    assert (body["width"], body["height"]) == Image.open(photo).size
    assert len(body["top"]) == 3 and sum(row["probability"] for row in body["top"]) == pytest.approx(1, abs=1e-4)
