"""A local web service for a trained run: JSON API, a drag-and-drop web page and the run's report.

Routes: `POST /api/predict` (multipart field `file`, query `top_k`), `GET /api/model`, `GET /health`,
`GET /` (the page, files under /static), `GET /report/` (RUN/report.html) and `GET /report/<file>`
(an allowlist of run files: plots, metrics, labels). Uploads are capped while they stream in (413),
checked by content with Pillow (400 with {"detail": ...} for anything that is not a usable image) and
predicted in FastAPI's threadpool with a model loaded once at start-up.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from transferlab.decoding import open_image
from transferlab.errors import TransferlabError

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
MAX_TOP_K = 100
REPORT_FILES = frozenset({"report.html", "metrics.json", "history.csv", "labels.txt", "export.json", "model.onnx.json"})
REPORT_PICTURE = re.compile(r"[A-Za-z0-9_.-]+\.(png|svg|jpg|jpeg)")  # the run's plots, top level only
METRIC_SUMMARY = ("test_accuracy", "top5_accuracy", "macro_f1", "val_accuracy", "n_classes", "n_train", "n_val",
                  "n_test", "test_is_validation", "tta")


class Predictor(Protocol):
    """What the service needs from a model: `Classifier` (torch) and `OnnxClassifier` both fit."""

    classes: list[str]

    def predict(self, images: list, top_k: int = 5) -> list: ...


def load_predictor(run_dir: Path, engine: str) -> tuple[Predictor, dict]:
    """The model (loaded once) and its description for /api/model."""
    if engine == "onnx":
        from transferlab.onnx_predict import OnnxClassifier

        model = OnnxClassifier(run_dir)
        return model, {"backbone": model.metadata["backbone"], "strategy": model.metadata["strategy"],
                       "model_file": model.path.name}
    if engine == "torch":
        from transferlab.api import load

        classifier = load(run_dir)
        return classifier, {"backbone": classifier.backbone, "strategy": classifier.strategy,
                            "model_file": "model.safetensors"}
    raise TransferlabError(f"unknown engine {engine!r}", hint="use torch (the default) or onnx")


def create_app(run_dir: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *, engine: str = "torch") -> FastAPI:
    """The service for one run folder; `engine="onnx"` serves RUN/model.onnx (see `transferlab export`)."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "model.json").is_file() and not (run_dir / "model.onnx").is_file():
        raise TransferlabError(f"{run_dir} is not a transferlab run folder",
                               hint="pass the folder written by `transferlab train --out DIR`")
    if max_upload_mb <= 0:
        raise TransferlabError(f"the upload limit must be positive, got {max_upload_mb} MB")
    model, description = load_predictor(run_dir, engine)
    model.predict([Image.new("RGB", (64, 64), "gray")], top_k=1)  # warm-up: sessions exist before requests race
    info = {"labels": list(model.classes), "engine": engine, **description,
            "metrics": metric_summary(run_dir), "max_upload_mb": max_upload_mb}

    app = FastAPI(title="transferlab", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    add_error_handlers(app, max_upload_mb)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/model")
    def model_info() -> dict:
        return {**info, "report": (run_dir / "report.html").is_file()}

    @app.post("/api/predict", max_body_size=int(max_upload_mb * 2**20))
    def predict(
        file: Annotated[UploadFile, File(description="An image file (JPEG, PNG, ...).")],
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 5,
    ) -> dict:
        # a sync endpoint: FastAPI runs it in its threadpool, so the event loop keeps serving during inference
        image = decode_upload(file.file.read())
        started = time.perf_counter()
        prediction = model.predict([image], top_k=top_k)[0]
        return {
            "filename": file.filename,
            "width": image.width,
            "height": image.height,
            "top": [{"label": label, "probability": probability} for label, probability in prediction.top],
            "seconds": round(time.perf_counter() - started, 4),
        }

    @app.get("/report", include_in_schema=False)
    def report_redirect() -> RedirectResponse:
        return RedirectResponse("/report/")  # so that the report's relative links (plots) resolve under /report/

    @app.get("/report/", include_in_schema=False)
    def report() -> FileResponse:
        return run_file(run_dir, "report.html")

    @app.get("/report/{name}", include_in_schema=False)
    def report_file(name: str) -> FileResponse:
        return run_file(run_dir, name)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def add_error_handlers(app: FastAPI, max_upload_mb: float) -> None:
    """Anything a client sends that is not a usable image is a 400 with {"detail": ...}, never a 500."""

    @app.exception_handler(TransferlabError)
    def user_error(_request: Request, exc: TransferlabError) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=400)

    @app.exception_handler(Image.DecompressionBombError)
    @app.exception_handler(Image.UnidentifiedImageError)
    def image_error(_request: Request, exc: Exception) -> JSONResponse:  # raised past decoding, e.g. by a resize
        return JSONResponse({"detail": f"unusable image: {exc}"[:200]}, status_code=400)

    @app.exception_handler(413)
    def too_large(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"upload too large: the limit is {max_upload_mb:g} MB"}, status_code=413)


def decode_upload(data: bytes) -> Image.Image:
    """Check an upload by its content (never its name); HTTP 400 if it is empty, not an image or unusable."""
    if not data:
        raise HTTPException(400, "empty upload: choose an image file")
    return open_image(data)  # ImageDecodeError (a TransferlabError, also for bombs and extreme shapes) -> 400


def run_file(run_dir: Path, name: str) -> FileResponse:
    """A file of the run folder if it is on the allowlist and really inside the folder; 404 otherwise."""
    allowed = name in REPORT_FILES or REPORT_PICTURE.fullmatch(name) is not None
    path = (run_dir / name).resolve() if allowed else None
    if path is None or path.parent != run_dir or not path.is_file():
        detail = "this run has no report.html yet" if name == "report.html" else "not found"
        raise HTTPException(404, detail)
    return FileResponse(path)


def metric_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    return {key: metrics[key] for key in METRIC_SUMMARY if key in metrics}


@contextmanager
def running_server(run_dir: str | Path, *, engine: str = "torch", startup_seconds: float = 90) -> Iterator[str]:
    """`transferlab serve` in a subprocess on a free 127.0.0.1 port; yields its URL once /health answers."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "transferlab", "serve", str(run_dir), "--port", str(port)]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads would stall a chatty server
    server = subprocess.Popen([*command, "--onnx"] if engine == "onnx" else command,
                              stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_seconds
        while not _healthy(httpx, url):
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"transferlab serve exited with {server.returncode}:\n{log.read()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"transferlab serve not healthy after {startup_seconds} s")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def _healthy(httpx, url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, engine: str = "torch") -> None:
    """Start the service with uvicorn (blocks until Ctrl-C)."""
    import uvicorn

    app = create_app(run_dir, max_upload_mb, engine=engine)
    uvicorn.run(app, host=host, port=port, log_level="warning")
