"""The method registry: name -> the module that defines it. One line per method.

This module imports nothing from fmix, so :mod:`fmix.params` can take the method names from it
(one source of truth) without loading torch; :func:`get_method` imports a method's module on
first use (a plug-in load, not a way around a package cycle).
"""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "none": "fmix.methods.none",
    "freq": "fmix.methods.freq",
    "ppfrfd": "fmix.methods.ppfrfd",
    "mixup": "fmix.methods.mixup",
    "adaptive": "fmix.methods.adaptive",
    "instahide": "fmix.methods.instahide",
    "ppfrfd_faithful": "fmix.methods.ppfrfd_faithful",
    "dctdp": "fmix.methods.dctdp",
    "dpsgd": "fmix.methods.dpsgd",
}

METHODS: tuple[str, ...] = tuple(REGISTRY)


def get_method(name: str):
    """The :class:`fmix.methods.base.Method` registered under ``name``.

    Args:
        name: a key of :data:`REGISTRY`.

    Returns:
        The method (the ``METHOD`` object of its module).

    Raises:
        ValueError: no method of that name.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return importlib.import_module(REGISTRY[name]).METHOD
