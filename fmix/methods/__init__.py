"""Protection methods as plug-ins: one module per method, one line each in :mod:`fmix.methods.registry`.

A method (:class:`fmix.methods.base.Method`) declares what the FR network sees (its encoder),
whether and how training samples are mixed, how k is chosen (fixed, or the adaptive game), its
training hooks, what ``fmix attack protection`` attacks, and what it reports about privacy. The
training loop (:mod:`fmix.train.loop`) only calls these; it never branches on a method's name.
Each run builds its own method object (:func:`build_method`), which holds the run's state.

This package's ``__init__`` stays light (the registry and the loader only): :mod:`fmix.params`
reads the names through :mod:`fmix.methods.registry`, which loads this file first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fmix.methods.registry import METHODS, REGISTRY

if TYPE_CHECKING:
    from fmix.methods.base import Method
    from fmix.params import TrainParams


def method_class(name: str) -> "type[Method]":
    """The class registered under ``name`` (its declarations: attack surface, summary, ...).

    Raises:
        ValueError: no method of that name.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    module, _, attribute = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def build_method(params: "TrainParams") -> "Method":
    """A new method object for one run of ``params.method`` (it owns the run's state)."""
    return method_class(params.method)(params)
