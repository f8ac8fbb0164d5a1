"""Shared bits of the benchmarks: where the data is, the machine description."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
CALTECH = SHARED / "datasets" / "caltech101" / "101_ObjectCategories"
CALTECH_EXCLUDED = "BACKGROUND_Google,Motorbikes,airplanes,Faces_easy,Faces"


def require_caltech() -> Path:
    if not CALTECH.is_dir():
        sys.exit(f"Caltech-101 not found at {CALTECH}: the benchmarks read ../shared/datasets")
    return CALTECH


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
