"""Peak memory of `transferlab serve` under concurrent huge-dimension uploads.

    python bench/serve_memory.py RUN [--clients 16] [--side 10000] [--max-upload-megapixels 40] [--json OUT]

Starts the server in a subprocess on 127.0.0.1 only, posts one small PNG of SIDE x SIDE pixels from CLIENTS
clients at once (asyncio + httpx), and reads the server's resident memory from /proc/PID/status (Linux):
VmRSS before, VmHWM (the peak) after, and VmRSS a few seconds after the last answer (is the memory returned?).
Pass --max-upload-megapixels 120 (training's limit) to see what decoding such uploads costs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image


def memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}  # kB -> MB


def huge_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((side, side)).convert("RGB").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError("server not healthy")


async def flood(url: str, data: bytes, clients: int) -> Counter:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        responses = await asyncio.gather(*(client.post(f"{url}/api/predict", files={"file": ("huge.png", data)})
                                           for _ in range(clients)), return_exceptions=True)
    return Counter(r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in responses)


def measure(run: Path, clients: int, side: int, megapixels: float) -> dict:
    data = huge_png(side)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "transferlab", "serve", str(run), "--host", "127.0.0.1",
                               "--port", str(port), "--max-upload-megapixels", str(megapixels)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url, server)
        before = memory_mb(server.pid)["VmRSS"]
        started = time.perf_counter()
        statuses = asyncio.run(flood(url, data, clients))
        seconds = time.perf_counter() - started
        time.sleep(3)
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"clients": clients, "image": f"{side}x{side} PNG, {len(data) // 1024} KB",
            "max_upload_megapixels": megapixels, "statuses": {str(k): v for k, v in statuses.items()},
            "seconds": round(seconds, 1), "rss_before_mb": round(before), "peak_mb": round(after["VmHWM"]),
            "rss_after_mb": round(after["VmRSS"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by `transferlab train`")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--side", type=int, default=10_000)
    parser.add_argument("--max-upload-megapixels", type=float, default=40.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.run, args.clients, args.side, args.max_upload_megapixels)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
