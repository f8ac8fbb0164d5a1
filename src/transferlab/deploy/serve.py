"""A local web service for a trained run: JSON API, a drag-and-drop web page and the run's report.

Routes: `POST /api/predict` (multipart field `file`, query `top_k`), `POST /api/explain` (the same upload: the
heatmap of the predicted class), `GET /api/model`, `GET /health`,
`GET /` (the page, files under /static), `GET /report/` (RUN/report.html) and `GET /report/<file>`
(an allowlist of run files: plots, metrics, labels). Uploads are capped while they stream in (413),
checked by content with Pillow (400 with {"detail": ...} for anything that is not a usable image) and
predicted in FastAPI's threadpool with a model loaded once at start-up.

A small PNG can claim 10000x10000 pixels and take gigabytes once decoded, so uploads have their own pixel cap
(far below training's, refused from the header before decoding), at most `max_decodes` uploads are decoded and
predicted at once, and freed memory is handed back to the system after a large image. Requests whose Host
header is not the address the server is bound to are refused (DNS rebinding: a web page cannot make the
browser talk to this local server under its own domain name).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import html
import json
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from PIL import ExifTags, Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

from transferlab.core.errors import TransferlabError
from transferlab.data.decoding import opened

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_UPLOAD_MEGAPIXELS = 40.0  # a 48 MP phone photo saved at full size is refused; training allows 120 MP
DEFAULT_MAX_DECODES = 2  # uploads decoded and predicted at once; the others wait their turn
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::", "")
LARGE_IMAGE_PIXELS = 4_000_000  # after a decode this large, return freed memory to the system
MAX_TOP_K = 100
REPORT_FILES = frozenset({"report.html", "metrics.json", "history.csv", "labels.txt", "export.json", "model.onnx.json"})
REPORT_PICTURE = re.compile(r"[A-Za-z0-9_.-]+\.(png|svg|jpg|jpeg)")  # the run's plots, top level only
METRIC_SUMMARY = ("test_accuracy", "top5_accuracy", "macro_f1", "val_accuracy", "n_classes", "n_train", "n_val",
                  "n_test", "test_is_validation", "tta")


class Predictor(Protocol):
    """What the service needs from a model: `Classifier` (torch) and `OnnxClassifier` both fit."""

    classes: list[str]

    def predict(self, images: list, top_k: int = 5) -> list: ...


def load_predictor(run_dir: Path, runtime: str, device: str = "auto") -> tuple[Predictor, dict]:
    """The model (loaded once) and its description for /api/model; the torch runtime's trunk runs on `device`."""
    if runtime == "onnx":
        from transferlab.deploy.onnx_predict import OnnxClassifier

        model = OnnxClassifier(run_dir)
        return model, {"backbone": model.metadata["backbone"], "strategy": model.metadata["strategy"],
                       "model_file": model.path.name}
    if runtime == "torch":
        from transferlab.model.classifier import Classifier

        classifier = Classifier.load(run_dir, device=device)
        return classifier, {"backbone": classifier.backbone, "strategy": classifier.strategy,
                            "model_file": "model.safetensors"}
    raise TransferlabError(f"unknown runtime {runtime!r}", hint="use torch (the default) or onnx")


def create_app(run_dir: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *, runtime: str = "torch",
               max_upload_megapixels: float = DEFAULT_MAX_UPLOAD_MEGAPIXELS, max_decodes: int = DEFAULT_MAX_DECODES,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> FastAPI:
    """The service for one run folder; `runtime="onnx"` serves RUN/model.onnx (see `transferlab export`).

    allowed_hosts: the Host header values accepted (without port); None accepts any (a server bound to 0.0.0.0).
    """
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "model.json").is_file() and not (run_dir / "model.onnx").is_file():
        raise TransferlabError(f"{run_dir} is not a transferlab run folder",
                               hint="pass the folder written by `transferlab train --out DIR`")
    if max_upload_mb <= 0:
        raise TransferlabError(f"the upload limit must be positive, got {max_upload_mb} MB")
    if max_upload_megapixels <= 0 or max_decodes < 1:
        raise TransferlabError(f"the pixel limit and decode count must be positive, got {max_upload_megapixels} "
                               f"megapixels and {max_decodes} decodes")
    max_pixels = int(max_upload_megapixels * 1_000_000)
    decoding = threading.BoundedSemaphore(max_decodes)
    model, description = load_predictor(run_dir, runtime)
    model.predict([Image.new("RGB", (64, 64), "gray")], top_k=1)  # warm-up: sessions exist before requests race
    info = {"labels": list(model.classes), "runtime": runtime, **description,
            "metrics": metric_summary(run_dir), "max_upload_mb": max_upload_mb,
            "max_upload_megapixels": max_upload_megapixels}

    app = FastAPI(title="transferlab", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    add_error_handlers(app, max_upload_mb)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/model")
    def model_info() -> dict:
        return {**info, "report": (run_dir / "report.html").is_file()}

    def on_upload(file: UploadFile, work):
        """(work(the upload's bytes), (width, height), seconds) for an upload within the limits; 400 when the
        model could not use it."""
        data = file.file.read()
        size = checked_upload(data, max_pixels)
        with decoding:  # bounds the memory held by decoded images, whatever the number of clients
            started = time.perf_counter()
            # the bytes, not a decoded image: the model decodes them as `predict` does (JPEG draft scale included)
            result = work(data)
            if size[0] * size[1] >= LARGE_IMAGE_PIXELS:
                release_freed_memory()
        if result.error:
            raise HTTPException(400, result.error)  # as a TransferlabError reads: the reason alone
        return result, size, round(time.perf_counter() - started, 4)

    @app.post("/api/predict", max_body_size=int(max_upload_mb * 2**20))
    def predict(
        file: Annotated[UploadFile, File(description="An image file (JPEG, PNG, ...).")],
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 5,
    ) -> dict:
        # a sync endpoint: FastAPI runs it in its threadpool, so the event loop keeps serving during inference
        prediction, size, seconds = on_upload(file, lambda data: model.predict([data], top_k=top_k)[0])
        return {
            "filename": file.filename,
            "width": size[0],
            "height": size[1],
            "top": [{"label": label, "probability": probability} for label, probability in prediction.top],
            # true: far from the training images or unusually unsure (see transferlab.model.confidence); null: not checked
            "low_confidence": prediction.low_confidence,
            "low_confidence_reason": prediction.low_confidence_reason,
            "seconds": seconds,
        }

    @app.post("/api/explain", max_body_size=int(max_upload_mb * 2**20))
    def explain(file: Annotated[UploadFile, File(description="An image file (JPEG, PNG, ...).")]) -> dict:
        """The Grad-CAM heatmap of the predicted class over the image as the model saw it (a PNG data: URI)."""
        if runtime != "torch":
            raise HTTPException(501, "explanations need the PyTorch model: serve with --model torch")
        from transferlab.reports.heatmaps import png_data_uri

        explanation, size, seconds = on_upload(file, lambda data: model.explain([data])[0])
        return {"filename": file.filename, "width": size[0], "height": size[1], "label": explanation.label,
                "probability": explanation.probability, "overlay": png_data_uri(explanation.overlay()),
                "seconds": seconds}

    @app.get("/report", include_in_schema=False)
    def report_redirect() -> RedirectResponse:
        return RedirectResponse("/report/")  # so that the report's relative links (plots) resolve under /report/

    @app.get("/report/", include_in_schema=False)
    def report() -> HTMLResponse:
        return HTMLResponse(report_without_local_paths(run_file(run_dir, "report.html").path, run_dir))

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


def checked_upload(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The upload's (width, height) as shown, read from its header (never its name): HTTP 400 if it is empty,
    not an image or over max_pixels, before any pixel is decoded."""
    if not data:
        raise HTTPException(400, "empty upload: choose an image file")
    with opened(data, max_pixels) as image:  # ImageDecodeError (a TransferlabError) -> 400
        # only a JPEG's EXIF sits in its header: a PNG's getexif() would decode the whole image to find it
        turned = image.format == "JPEG" and image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
        return (image.height, image.width) if turned else image.size


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system. glibc keeps what a thread freed in that thread's arena, so a
    server that once decoded a few huge images would otherwise hold gigabytes it no longer uses."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only; other allocators return memory themselves
        libc.malloc_trim(0)


def report_without_local_paths(report: Path, run_dir: Path) -> str:
    """report.html with the absolute data and run folders shown by their names only: the served page should not
    tell a visitor where the data lives on this machine."""
    text = report.read_text(encoding="utf-8")
    config = run_dir / "config.json"
    data = json.loads(config.read_text()).get("data") if config.is_file() else None
    for folder in filter(None, (data, str(run_dir))):
        path = Path(folder)
        text = text.replace(html.escape(str(path)), html.escape(path.name)).replace(str(path), path.name)
    return text


def hosts_for(bound: str) -> tuple[str, ...] | None:
    """Host header values to accept for a server bound to `bound`: its loopback names when bound to loopback,
    the address itself otherwise; any when bound to every interface (the user chose to expose it)."""
    if bound in ANY_ADDRESS:
        return None
    return LOOPBACK_HOSTS if bound in LOOPBACK_HOSTS else (bound,)


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


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, runtime: str = "torch",
          max_upload_megapixels: float = DEFAULT_MAX_UPLOAD_MEGAPIXELS) -> None:
    """Start the service with uvicorn (blocks until Ctrl-C)."""
    import uvicorn

    app = create_app(run_dir, max_upload_mb, runtime=runtime, max_upload_megapixels=max_upload_megapixels,
                     allowed_hosts=hosts_for(host))
    uvicorn.run(app, host=host, port=port, log_level="warning")
