"""``ppfrfd``: frequency masking alone (the exported masker's channels, no mixing)."""

from __future__ import annotations

from fmix.methods.base import MaskingMethod


class MaskingOnly(MaskingMethod):
    name = "ppfrfd"
    summary = "the masker's channels (low frequencies dropped), never mixed"
