"""How every ``fmix`` command answers bad input: one line ``error: ...`` on stderr and exit code 1."""

from __future__ import annotations

from typing import Callable, TypeVar

import typer

from fmix._optional import MissingExtraError

T = TypeVar("T")

# Errors caused by what the user passed (paths, files, values, a missing extra), shown as one line;
# any other exception is a bug and keeps its traceback.
USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    MissingExtraError,
)


def fail(message: str) -> None:
    """Print ``error: message`` to stderr and exit with code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def guarded(step: Callable[[], T]) -> T:
    """Run a library call; bad input becomes a one-line error and exit code 1, not a traceback."""
    try:
        return step()
    except USER_ERRORS as err:
        fail(one_line(err))


def one_line(err: Exception) -> str:
    """The error's message on one line (OS errors name their file)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__
