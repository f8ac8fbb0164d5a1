"""A real `transferlab serve` in a subprocess, for tests and benchmarks (kept out of the product module)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def running_server(run_dir: str | Path, *, runtime: str = "torch", startup_seconds: float = 90) -> Iterator[str]:
    """`transferlab serve` in a subprocess on a free 127.0.0.1 port; yields its URL once /health answers."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "transferlab", "serve", str(run_dir), "--port", str(port)]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads would stall a chatty server
    server = subprocess.Popen([*command, "--model", runtime],
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
