"""Load check for `transferlab serve`: N concurrent clients post one image for a fixed time.

    python bench/serve_load.py RUN IMAGE [--clients 8] [--seconds 20] [--engine torch|onnx] [--json OUT]

Starts the server in a subprocess on 127.0.0.1, runs the clients with httpx (asyncio), and prints requests/s,
p50/p99 latency and errors as a markdown snippet (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the server harness lives with the tests
from server_harness import running_server  # noqa: E402


async def client_loop(client: httpx.AsyncClient, url: str, image: bytes, name: str, until: float,
                      latencies: list[float], statuses: Counter) -> None:
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            response = await client.post(f"{url}/api/predict", files={"file": (name, image)})
            statuses[response.status_code] += 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
            continue
        latencies.append(time.perf_counter() - started)


async def load(url: str, image: Path, clients: int, seconds: float) -> dict:
    data = image.read_bytes()
    latencies: list[float] = []
    statuses: Counter = Counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await client.post(f"{url}/api/predict", files={"file": (image.name, data)})  # warm the connection pool
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client_loop(client, url, data, image.name, until, latencies, statuses)
                               for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": sum(statuses.values()),
        "requests_per_second": round(ok / elapsed, 1),
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1) if latencies else None,
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1) if latencies else None,
        "errors": {str(k): v for k, v in statuses.items() if k != 200},
    }


def markdown(result: dict, image: Path, engine: str) -> str:
    errors = sum(result["errors"].values())
    return "\n".join([
        f"Load check: `transferlab serve` ({engine} engine), {result['clients']} concurrent clients for "
        f"{result['seconds']} s, one {image.stat().st_size // 1024} KB JPEG ({image.name}); "
        f"{os.cpu_count()}-core CPU, {platform.python_implementation()} {platform.python_version()}.",
        "",
        "| engine | clients | requests/s | p50 latency | p99 latency | errors |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {engine} | {result['clients']} | {result['requests_per_second']} | {result['p50_ms']} ms | "
        f"{result['p99_ms']} ms | {errors} of {result['requests']} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by `transferlab train`")
    parser.add_argument("image", type=Path, help="image file to post")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--engine", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    with running_server(args.run, runtime=args.engine) as url:
        result = asyncio.run(load(url, args.image, args.clients, args.seconds))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "engine": args.engine, "image": str(args.image)}, indent=2))
    print(markdown(result, args.image, args.engine))


if __name__ == "__main__":
    main()
