"""A real HTTP server on 127.0.0.1 for download tests: serves one folder and records every request path."""

from __future__ import annotations

import functools
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _RecordingHandler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requested.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


class WeightsServer:
    """Context manager: `with WeightsServer(folder) as server: server.url("x.safetensors"); server.requested`."""

    def __init__(self, directory: Path):
        handler = functools.partial(_RecordingHandler, directory=str(directory))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the OS picks a free port
        self._httpd.requested = []
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def requested(self) -> list[str]:
        return self._httpd.requested

    def url(self, filename: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{filename}"

    def __enter__(self) -> WeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def refused_url() -> str:
    """A URL on a local port that was free a moment ago, so connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.safetensors"
