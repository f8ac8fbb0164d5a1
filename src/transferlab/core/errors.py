"""The one exception type users see (a message plus a hint, printed by the CLI as two lines), and the one-line
warnings for what transferlab repaired by itself (a damaged cache entry discarded and recomputed)."""

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
    """One line on stderr: something went wrong that transferlab repaired itself; the run goes on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
