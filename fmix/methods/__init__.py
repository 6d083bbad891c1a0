"""Protection methods as plug-ins: one module per method, one line each in :mod:`fmix.methods.registry`.

A method (:class:`fmix.methods.base.Method`) declares what the FR network sees (its encoder),
whether and how training samples are mixed, how k is chosen (fixed, or the adaptive game), its
training hooks, what ``fmix attack protection`` attacks, and what it reports about privacy. The
training loop (:mod:`fmix.train.loop`) only calls these; it never branches on a method's name.

This package's ``__init__`` stays light (the registry only): :mod:`fmix.params` reads the names.
"""

from fmix.methods.registry import METHODS, REGISTRY, get_method

__all__ = ["METHODS", "REGISTRY", "get_method"]
