"""The privacy score of docs/design.md §6 and one row of the privacy table."""

from __future__ import annotations

from dataclasses import dataclass

from fmix.checks import check_number


def _unit(value: object, name: str) -> float:
    value = check_number(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Expected {name} in [0, 1], got {value}")
    return value


def score_pp(s1: float, s2: float, s3: float, s4: float, alpha: float = 0.4, beta: float = 0.6) -> float:
    """Privacy score ``alpha (1 - (S1 + S2) / 2) + beta (1 - (S3 + S4) / 2)``; higher is more private.

    Args:
        s1: SSIM(original, inverse transform of the protected sample), visual level.
        s2: evaluator identity accuracy on those visualisations.
        s3: SSIM(original, best reconstruction), attack level.
        s4: evaluator top-1 identity accuracy on the reconstructions.
        alpha: weight of the visual level (paper: 0.4).
        beta: weight of the attack level (paper: 0.6).

    Returns:
        The score, in [0, alpha + beta].

    Raises:
        ValueError: a value or weight outside [0, 1] (an SSIM below 0 must be clipped by the caller).
    """
    s1, s2, s3, s4 = (_unit(v, n) for v, n in ((s1, "s1"), (s2, "s2"), (s3, "s3"), (s4, "s4")))
    alpha, beta = _unit(alpha, "alpha"), _unit(beta, "beta")
    return alpha * (1.0 - (s1 + s2) / 2.0) + beta * (1.0 - (s3 + s4) / 2.0)


@dataclass(frozen=True)
class PrivacyRow:
    """One method's line of the privacy table.

    ``s2`` and ``s4`` need the independent evaluator; while either is missing, ``score_pp`` is None.

    Args:
        method: method name (``none``, ``ppfrfd``, ``adaptive``, ...).
        s1: SSIM of the protected visualisation.
        s2: evaluator accuracy on the visualisations, or None.
        s3: best-constituent SSIM of the reconstructions.
        s4: evaluator top-1 accuracy on the reconstructions, or None.
        psnr: PSNR of the reconstructions (dB).
        top5: evaluator top-5 accuracy on the reconstructions, or None.
        floor: the free SSIM floor the attack SSIM is read against.
        score_cls: verification accuracy of the method's FR model, or None.
    """

    method: str
    s1: float
    s2: float | None
    s3: float
    s4: float | None
    psnr: float
    top5: float | None = None
    floor: float | None = None
    score_cls: float | None = None

    @property
    def score_pp(self) -> float | None:
        """:func:`score_pp` of the row, None while S2 or S4 is missing."""
        if self.s2 is None or self.s4 is None:
            return None
        return score_pp(max(self.s1, 0.0), self.s2, max(self.s3, 0.0), self.s4)

    def to_dict(self) -> dict:
        """The row with the table's column names (``S1`` ... ``Score_pp``, ``Score_cls``)."""
        return {
            "method": self.method,
            "S1": self.s1,
            "S2": self.s2,
            "S3": self.s3,
            "S4": self.s4,
            "psnr": self.psnr,
            "top5": self.top5,
            "floor": self.floor,
            "Score_pp": self.score_pp,
            "Score_cls": self.score_cls,
        }
