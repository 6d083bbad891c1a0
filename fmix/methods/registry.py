"""The method registry: name -> where its class lives (``module:Class``). One line per method.

This module is data only and imports nothing, so :mod:`fmix.params` takes the method names from it
(one source of truth) without loading torch. The paths are resolved by :func:`fmix.methods.method_class`
(a plug-in load: a method's module, e.g. ``dpsgd`` and its optional opacus, loads on first use);
``tests/test_layers.py`` counts these paths as imports of :mod:`fmix.methods`, the loader.
"""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "none": "fmix.methods.none:NoProtection",
    "freq": "fmix.methods.freq:AllChannels",
    "ppfrfd": "fmix.methods.ppfrfd:MaskingOnly",
    "mixup": "fmix.methods.mixup:FixedKMixup",
    "adaptive": "fmix.methods.adaptive:AdaptiveMixup",
    "instahide": "fmix.methods.instahide:InstaHide",
    "ppfrfd_faithful": "fmix.methods.ppfrfd_faithful:PpfrfdFaithful",
    "dctdp": "fmix.methods.dctdp:Dctdp",
    "dpsgd": "fmix.methods.dpsgd:DpSgd",
}

METHODS: tuple[str, ...] = tuple(REGISTRY)
