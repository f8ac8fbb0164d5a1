"""docs/tutorial.ipynb is executed here, as a user's Jupyter would run it, so it can never drift from the code.

The kernel starts in docs/ (where Jupyter starts a notebook's kernel), reads ../shared through TRANSFERLAB_SHARED,
writes its runs under a temporary folder (TRANSFERLAB_TUTORIAL_RUNS) and uses the test session's isolated
feature cache (TRANSFERLAB_CACHE, inherited from this process).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
EXECUTED = Path(__file__).resolve().parents[1] / "test-output" / "tutorial.executed.ipynb"  # gitignored, to look at
KERNEL = "transferlab-test"
CELL_TIMEOUT_S = 600  # generous: fine-tuning, the slowest cell, took 32-43 s of 107-141 s runs (shared 2-core CPU)


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec running this interpreter (so this checkout's transferlab), found before any user-wide
    "python3" spec that might point at another Python."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(tmp_path / "jupyter" / "kernels" / KERNEL)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def test_committed_tutorial_has_no_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code), (
        "strip the outputs before committing: "
        "python scripts/strip_notebook.py docs/tutorial.ipynb"
    )


@pytest.mark.integration
def test_tutorial_notebook_executes_without_error(shared, kernel, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TRANSFERLAB_SHARED", str(shared))
    monkeypatch.setenv("TRANSFERLAB_TUTORIAL_RUNS", str(tmp_path / "runs"))
    assert os.environ.get("TRANSFERLAB_CACHE"), "the session's isolated cache should be set by conftest"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=kernel,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    finally:
        EXECUTED.parent.mkdir(exist_ok=True)
        nbformat.write(notebook, EXECUTED)

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    cards = [o for o in outputs if "transferlab-card" in o.get("data", {}).get("text/html", "")]
    assert len(cards) >= 7  # five classifiers, the comparison and the loaded run
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 8  # history, augmentations (3), comparison, confusion, top losses, predictions
    assert (tmp_path / "runs" / "ants-bees" / "extract" / "model.onnx").is_file()
    # progress without flooding: one live widget per bar (verbose=1), one line per epoch (verbose=2)
    assert max(len(cell.outputs) for cell in notebook.cells if cell.cell_type == "code") <= 40
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "rich draws its progress bars in ipywidgets in Jupyter"


def test_figures_show_exactly_once_in_a_kernel_whether_or_not_pyplot_is_imported(kernel):
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    draw = "from transferlab.reports.plots import history_figure\nhistory_figure([{'epoch': 1, 'loss': 1.0, " \
           "'accuracy': 0.5, 'val_loss': 1.1, 'val_accuracy': 0.4}])"
    notebook = new_notebook(cells=[new_code_cell(draw), new_code_cell("import matplotlib.pyplot as plt"),
                                   new_code_cell(draw)])
    NotebookClient(notebook, timeout=120, kernel_name=kernel).execute()
    pictures = [[o for o in cell.outputs if "image/png" in o.get("data", {})] for cell in notebook.cells]
    assert [len(p) for p in pictures] == [1, 0, 1]
