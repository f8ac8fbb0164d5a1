"""The engine commands of the `transferlab` shell (registered on its app by cli.py): `embed`, and bulk
prediction (`predict --engine ray --out`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from transferlab.cli import preflight
from transferlab.cli.common import emit_json, flag, out, state
from transferlab.core.config import DEFAULT_BACKBONE, split_fractions


def embed(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `transferlab train`.")],
    out_file: Annotated[Path, typer.Option("--out", help="Parquet file: path, label, split, feature.")] = Path("features.parquet"),
    backbone: Annotated[str, typer.Option(help="Frozen backbone (see `transferlab backbones`).")] = DEFAULT_BACKBONE,
    split: str = flag("split"),
    seed: Annotated[int, typer.Option(help="Seed for the split (as train's).")] = 0,
    engine: str = flag("engine"),
    ray_address: Optional[str] = flag("ray_address"),
):
    """Write every image's frozen features to a parquet file (unreadable files: OUT's .skipped.csv)."""
    preflight.check_data_folder(data)
    preflight.check_backbone(backbone)
    from transferlab.engines.embed import embed as embed_api

    result = embed_api(data, out_file, backbone=backbone, split=split_fractions(split), seed=seed, engine=engine,
                       ray_address=ray_address, quiet=state.quiet)
    if state.json:
        emit_json({"out": str(result.out), "rows": result.rows, "dim": result.dim, "skipped": result.skipped})
    elif not state.quiet:
        out.print(f"wrote {result.rows} feature vectors of {result.dim} to {result.out} ({result.skipped} skipped: {result.skipped_csv})")


def predict_in_bulk(engine: str, run: Path, images: list[Path], out_file: Path | None, *, top_k: int, tta: int,
                    ray_address: str | None) -> None:
    """`predict --engine ray --out FILE`: one row per image in FILE, written in resumable parts."""
    from transferlab.engines.local import bulk_predict

    written = bulk_predict(engine, run, images, out_file, top_k=top_k, tta=tta, address=ray_address, quiet=state.quiet)
    if state.json:
        emit_json({"out": str(written)})
    elif not state.quiet:
        out.print(f"wrote {written}")
