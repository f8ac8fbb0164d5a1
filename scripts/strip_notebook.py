"""Strip outputs, execution counts and widget state from notebooks before committing them.

    python scripts/strip_notebook.py docs/tutorial.ipynb

tests/test_notebook.py checks that the committed tutorial has no outputs; CI executes it instead.
"""

from __future__ import annotations

import sys

import nbformat


def strip(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)


if __name__ == "__main__":
    for argument in sys.argv[1:] or ["docs/tutorial.ipynb"]:
        strip(argument)
