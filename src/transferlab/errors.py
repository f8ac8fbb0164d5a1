"""The one exception type users see (a message plus a hint, printed by the CLI as two lines), and the one way
a repair that the run survives (a damaged cache entry recomputed) is reported: one yellow line on stderr."""

import sys


class TransferlabError(Exception):
    """An error caused by the user's input or environment, with a hint on how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


def warn(message: str) -> None:
    """One warning line on stderr (the skipped-file lines' colour), for something repaired on the way."""
    from rich.console import Console

    Console(file=sys.stderr).print(f"[yellow]warning: {message}[/]", highlight=False, soft_wrap=True)
