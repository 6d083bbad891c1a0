"""``none``: the unprotected baseline, an RGB ArcFace-style model on the aligned faces."""

from __future__ import annotations

from fmix.methods.base import Method


class NoProtection(Method):
    name = "none"
    summary = "RGB faces, no protection (the utility ceiling)"
