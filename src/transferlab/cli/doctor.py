"""`transferlab doctor DATA`: the near-duplicates, leaks, likely label errors and outliers of a folder of images
(transferlab.runs.doctor), with train's layouts, split and feature cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from transferlab.cli.common import comma_list, emit_json, flag, out, state
from transferlab.core.config import check_data_folder
from transferlab.core.run_folder import check_destination


def doctor(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `transferlab train`.")],
    backbone: Annotated[Optional[str], typer.Option(help="Backbone whose features are compared (default "
                                                    "efficientnet_lite0, train's: the cache is shared).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for findings.csv, findings.json and "
                                                    "doctor.html (default runs/<data>-doctor).")] = None,
    overwrite: bool = flag("overwrite"),
    include: Optional[str] = flag("include"),
    exclude: Optional[str] = flag("exclude"),
    split: str = flag("split"),
    split_csv: Optional[Path] = flag("split_csv"),
    max_per_class: Optional[int] = flag("max_per_class"),
    seed: int = flag("seed"),
    device: str = flag("device"),
    runtime: str = flag("runtime"),
):
    """Find near-duplicates (and the leaks and label conflicts among them), likely label errors, outliers and
    set-level problems; write findings.csv (for `train --skip`) and doctor.html. The data folder is left as it is."""
    check_data_folder(data)
    check_destination(out_dir, overwrite)
    from rich.console import Console

    from transferlab.core.settings import SplitConfig
    from transferlab.runs.doctor import doctor as run_doctor

    chosen = SplitConfig(fractions=split, include=comma_list(include), exclude=comma_list(exclude),
                         max_per_class=max_per_class, split_csv=split_csv)
    console = Console(stderr=state.json, quiet=state.quiet)  # stdout holds the JSON alone with --json
    findings = run_doctor(data, backbone=backbone, split=chosen, seed=seed, out=out_dir, overwrite=overwrite,
                          device=device, runtime=runtime, quiet=state.quiet, console=console)
    if state.json:
        emit_json({**findings.summary(), "out": str(findings.out), "notes": findings.notes})
    elif not state.quiet:
        out.print(f"next: open {findings.out / 'doctor.html'}; then `transferlab train {data} --skip "
                  f"{findings.out / 'findings.csv'}` trains without the flagged files", soft_wrap=True)
