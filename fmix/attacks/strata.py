"""Strata of photos per identity: the attacks score the people with many photos apart from the others.

A person with many photos in the private training split is the heaviest constituent of many
released samples and of many attacked ones; averages over random faces hide them, so the attacks
report per stratum (docs/threat-model.md).
"""

from __future__ import annotations

DEFAULT_STRATA = (2, 5, 20)  # photos per identity in the private training split: 2-4, 5-19, 20+


def parse_strata(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Stratum bounds from ``"2,5,20"`` (or a sequence): increasing photo counts, each >= 1.

    Raises:
        ValueError: not increasing integers >= 1.
    """
    try:
        bounds = tuple(int(part) for part in text.split(",")) if isinstance(text, str) else tuple(int(b) for b in text)
    except ValueError as err:
        raise ValueError(f"Expected strata as increasing photo counts such as 2,5,20, got {text!r}") from err
    if not bounds or bounds[0] < 1 or any(b >= c for b, c in zip(bounds, bounds[1:])):
        raise ValueError(f"Expected strata as increasing photo counts >= 1 such as 2,5,20, got {text!r}")
    return bounds


def stratum_names(bounds: tuple[int, ...]) -> list[str]:
    """Names of the strata of :func:`stratum_of`: ``(2, 5, 20)`` -> ``["2-4", "5-19", "20+"]``."""
    names = [f"{low}-{high - 1}" if high - 1 > low else str(low) for low, high in zip(bounds, bounds[1:])]
    return names + [f"{bounds[-1]}+"]


def stratum_of(photos: int, bounds: tuple[int, ...]) -> str:
    """The stratum of an identity with ``photos`` photos in the private training split.

    Args:
        photos: the identity's photos.
        bounds: stratum bounds (:func:`parse_strata`).

    Returns:
        One of :func:`stratum_names`, or for fewer photos than the first bound ``"1"`` /
        ``"1-<bound - 1>"``.
    """
    if photos < bounds[0]:
        return "1" if bounds[0] == 2 else f"1-{bounds[0] - 1}"
    names = stratum_names(bounds)
    return names[max(i for i, low in enumerate(bounds) if photos >= low)]
