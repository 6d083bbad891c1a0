"""The ``fmix`` command: one thin Typer subcommand per pipeline step (:mod:`fmix.cli.app`)."""

from fmix.cli.app import app

__all__ = ["app"]
