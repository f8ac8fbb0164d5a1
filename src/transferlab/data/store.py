"""Decode once: every image of a run decoded a single time into a uint8 store that batches index.

The end-to-end paths (whole-network fine-tuning, training from scratch) read their images many times, once per
epoch. Decoding a JPEG and resizing it dominates that on a CPU and starves a GPU (issue 23: PIL work, not the
network, was the limit), so each file is decoded here once, with the robust decoder every path shares
(`decoding.open_image`), at the size its augmentation needs: the shorter side resized to `size` and centre-cropped
to a `size` x `size` square (for a backbone, its resize size: ~1.15x its input, so random crops and shifts have
real pixels to move into). A batch is then an index into one [n, 3, size, size] tensor.

Where the tensor lives: in RAM (pinned when a real CUDA device will read it, so copies overlap compute), on the
GPU itself when it fits comfortably in free GPU memory, and in a memory-mapped temporary file when it is larger
than `memory_limit` (the file is anonymous: nothing is left on disk, whatever happens to the process).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from transferlab.core.progress import make_progress
from transferlab.data.decoding import ImageDecodeError, open_image, resize_and_crop

# A store may take this share of the memory the machine has available when the run starts; above it, it spills.
RAM_SHARE = 0.5
# ... and this share of a GPU's free memory (the network, its activations and the optimizer need the rest).
GPU_SHARE = 0.4


class ImageStore:
    """uint8 [n, 3, size, size] images of the files that decoded (in their order), and why the others failed."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor, failed: dict[Path, str], spilled: bool):
        self._images = images  # one slot per path given, failed ones never read
        self._rows = rows  # the slots of the files that decoded
        self.failed = failed
        self.spilled = spilled

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def size(self) -> int:
        return self._images.shape[-1]

    @property
    def device(self) -> torch.device:
        return self._images.device

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at `indices` (positions among the decoded files), where the store lives."""
        return self._images[self._rows[indices].to(self._images.device)]

    def centre(self, crop: int) -> torch.Tensor:
        """Every image centre-cropped to `crop` (a view, no copy in RAM): the unaugmented input, exactly what
        `resize_and_crop(image, size, crop)` gives, as the nested crops share their rounding."""
        offset = int(round((self.size - crop) / 2.0))
        return self._images[self._rows.to(self._images.device), :, offset : offset + crop, offset : offset + crop]


def decode_store(
    paths: Sequence[Path],
    size: int,
    interpolation: str,
    *,
    device: str = "cpu",
    memory_limit: int | None = None,
    description: str = "decoding",
    quiet: bool = True,
    workers: int | None = None,
) -> ImageStore:
    """Decode `paths` once each in worker threads (PIL's decoders release the GIL) into an ImageStore for
    training on `device`. `memory_limit` (bytes) overrides RAM_SHARE of the available memory."""
    nbytes = len(paths) * 3 * size * size
    limit = memory_limit if memory_limit is not None else int(RAM_SHARE * available_memory())
    spilled = nbytes > limit
    images = _spill_tensor(len(paths), size) if spilled else _ram_tensor(len(paths), size, device)
    failed = _decode_into(images, paths, _decoder(size, interpolation), description, quiet, workers)
    rows = torch.tensor([i for i, path in enumerate(paths) if path not in failed], dtype=torch.long)
    if device.startswith("cuda") and not spilled and nbytes < GPU_SHARE * gpu_free_memory(device):
        images = images.to(device)
    return ImageStore(images, rows, failed, spilled)


def _decoder(size: int, interpolation: str) -> Callable[[Path], np.ndarray]:
    def decode(path: Path) -> np.ndarray:  # HxWx3 uint8, as the extractor decodes (draft, resize, crop)
        return resize_and_crop(open_image(path, draft_size=(size, size)), size, size, interpolation)

    return decode


def _decode_into(images: torch.Tensor, paths: Sequence[Path], decode, description: str, quiet: bool,
                 workers: int | None) -> dict[Path, str]:
    failed: dict[Path, str] = {}

    def work(slot: int) -> None:
        path = paths[slot]
        try:
            images[slot].numpy()[...] = decode(path).transpose(2, 0, 1)  # straight into the slot, no tensor copy
        except ImageDecodeError as exc:
            failed[path] = exc.message
        except (OSError, ValueError) as exc:  # anything else PIL raises on a bad file
            failed[path] = f"{type(exc).__name__}: {exc}"

    with make_progress(quiet) as progress, ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        task = progress.add_task(description, total=len(paths), rate="")
        for _ in pool.map(work, range(len(paths))):
            progress.advance(task)
    return failed


def _ram_tensor(count: int, size: int, device: str) -> torch.Tensor:
    # Pinning needs the CUDA driver itself (torch.cuda.is_available: the real machine, not the simulated one).
    pin = device.startswith("cuda") and torch.cuda.is_available()
    return torch.empty((count, 3, size, size), dtype=torch.uint8, pin_memory=pin)


def _spill_tensor(count: int, size: int) -> torch.Tensor:
    """A tensor backed by an anonymous temporary file (unlinked at creation: it vanishes with the mapping)."""
    with tempfile.TemporaryFile(prefix="transferlab-store-") as file:
        mapped = np.memmap(file, dtype=np.uint8, mode="w+", shape=(max(count, 1), 3, size, size))
    return torch.from_numpy(mapped)[:count]


def available_memory() -> int:
    """Bytes of physical memory free now (POSIX sysconf; no extra dependency). Unknown: assume 4 GiB."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def gpu_free_memory(device: str) -> int:
    """Free bytes on a real CUDA device; 0 where there is none (a simulated GPU keeps its store in RAM)."""
    if not torch.cuda.is_available():
        return 0
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free)
