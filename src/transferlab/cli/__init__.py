"""The `transferlab` command: a thin Typer shell over the Python API; preflight checks before heavy imports.

May import everything."""
