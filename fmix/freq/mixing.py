"""Frequency MixUp (docs/design.md §2.4): mix each masked anchor with ``k - 1`` partners of the batch.

A protected training sample is ``x = sum_i w_i * m(a_i)`` over its anchor ``a_1`` and partners
``a_2..a_k``; the label weights are the same ``w``. The number of constituents ``k`` may differ
per sample (the strategy network picks it), so every tensor has ``k_max`` columns and the
weights beyond a sample's ``k`` are zero.

The random parts are drawn in one place, :func:`sample_mixing`, in a fixed order (partners,
weights, sign mask) from an explicit ``torch.Generator``; applying them, :func:`apply_mixing`,
is deterministic and uses only indexing / multiply / add, so a masker can export it to
ONNX and feed it noise drawn outside. Nothing loops over samples.

Noise is created on the generator's device and moved to the device of the labels, so one seed
gives the same draw on CPU and CUDA when the generator is a CPU one.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fmix.checks import check_float, check_int, check_integer, check_shape_bchw, check_tensor

LAWS = ("dirichlet", "instahide")
DEFAULT_CAP = 0.65
RESAMPLE_ROUNDS = 32


class PartnerDraw(NamedTuple):
    """Partners of every anchor; see :func:`draw_partners`."""

    partners: Tensor
    fallback: Tensor


class MixingDraw(NamedTuple):
    """The random parts of one Frequency MixUp; see :func:`sample_mixing`."""

    partners: Tensor
    weights: Tensor
    sign: Tensor | None
    fallback: Tensor


# --------------------------------------------------------------------------- checks


def _noise_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _check_labels(labels: object) -> Tensor:
    labels = check_tensor(labels, "labels")
    check_integer(labels, "labels")
    if labels.dim() != 1:
        raise ValueError(f"Expected labels of shape (B,), got {tuple(labels.shape)}")
    return labels


def _check_k_max(k_max: object) -> int:
    if check_int(k_max, "k_max") < 1:
        raise ValueError(f"Expected k_max >= 1, got {k_max}")
    return k_max


def _check_k(k: object, batch: int, k_max: int, device: torch.device) -> Tensor:
    """Per-sample k as a (B,) int64 tensor; an int is broadcast to the batch."""
    if isinstance(k, int) and not isinstance(k, bool):
        k = torch.full((batch,), k, dtype=torch.long, device=device)
    k = check_tensor(k, "k")
    check_integer(k, "k")
    if k.shape != (batch,):
        raise ValueError(f"Expected k of shape ({batch},), got {tuple(k.shape)}")
    if batch and (k.min() < 1 or k.max() > k_max):
        raise ValueError(f"Expected k in [1, {k_max}], got values in [{k.min()}, {k.max()}]")
    return k.long()


def _check_law(law: object) -> str:
    if law not in LAWS:
        raise ValueError(f"Expected law in {LAWS}, got {law!r}")
    return law


def _check_cap(cap: float | None, k: Tensor) -> None:
    if cap is None:
        return
    if not isinstance(cap, (int, float)) or isinstance(cap, bool):
        raise TypeError(f"Expected cap to be a float or None, got {type(cap).__name__}")
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"Expected cap in (0, 1], got {cap}")
    mixed = k[k >= 2]
    if mixed.numel() and cap * mixed.min().item() < 1.0 - 1e-9:
        smallest = mixed.min().item()
        raise ValueError(
            f"cap {cap} is infeasible for k={smallest}: k weights on the simplex cannot all be "
            f"<= cap when cap * k < 1 (need cap >= {1.0 / smallest:.4g})"
        )


# --------------------------------------------------------------------------- weights


def _draw_simplex(law: str, active: Tensor, generator, dtype: torch.dtype) -> Tensor:
    """Rows of positive raw draws on the active entries, normalised to sum 1."""
    device = _noise_device(generator, active.device)
    if law == "dirichlet":  # Exponential(1) = -log(1 - U); normalised: Dirichlet(1, ..., 1)
        u = torch.rand(active.shape, generator=generator, device=device, dtype=dtype)
        raw = -torch.log1p(-u)
    else:  # InstaHide: |N(0, 1)| normalised
        raw = torch.randn(active.shape, generator=generator, device=device, dtype=dtype).abs()
    raw = raw.to(active.device).clamp_min(torch.finfo(dtype).tiny) * active
    return raw / raw.sum(dim=1, keepdim=True)


def _project_to_cap(weights: Tensor, active: Tensor, cap: float) -> Tensor:
    """Clip at ``cap`` and hand the excess to the uncapped entries in proportion to them.

    Each round either finishes or caps at least one more entry, so ``k_max`` rounds reach a
    point on the simplex with every entry <= cap (feasible since cap * k >= 1).
    """
    tiny = torch.finfo(weights.dtype).tiny
    for _ in range(weights.shape[1]):
        weights = weights.clamp_max(cap)
        excess = 1.0 - weights.sum(dim=1, keepdim=True)
        free = weights * (active & (weights < cap))
        weights = weights + free * (excess / free.sum(dim=1, keepdim=True).clamp_min(tiny))
    return weights


def mix_weights(
    k: Tensor,
    k_max: int,
    law: str = "dirichlet",
    cap: float | None = DEFAULT_CAP,
    generator: torch.Generator | None = None,
    resample_rounds: int = RESAMPLE_ROUNDS,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mixing weights of every sample, on the simplex, with a cap on the largest.

    Row ``b`` has ``k[b]`` positive weights in its first ``k[b]`` columns (summing to 1) and
    zeros after. Laws: ``"dirichlet"`` draws Dirichlet(1, ..., 1), i.e. normalised
    Exponential(1) variables ``-log(1 - U)``; ``"instahide"`` normalises ``|N(0, 1)|`` draws.

    The cap ``max_i w_i <= cap`` (for ``k >= 2``) is enforced by rejection: rows that violate
    it are redrawn, all at once, up to ``resample_rounds`` times, which samples the law
    conditioned on the cap exactly. Rows still violating afterwards (about ``0.7**32 ~ 1e-5``
    of the ``k=2`` rows for Dirichlet with cap 0.65; all rows when ``cap * k == 1``) are
    projected: clipped at the cap with the excess spread over the uncapped entries in
    proportion to their weights, repeated until it holds. Rows with ``k = 1`` are exactly
    ``(1, 0, ..., 0)``.

    Args:
        k: number of constituents per sample, in [1, k_max] (k = 1: no mixing).
        k_max: number of columns.
        law: ``"dirichlet"`` or ``"instahide"``.
        cap: largest allowed weight for ``k >= 2``, in (0, 1], or None for no cap.
        generator: source of randomness (seeded for reproducibility).
        resample_rounds: number of rejection rounds before projecting.
        dtype: floating dtype of the weights.

    Shape:
        - k: :math:`(B,)`.
        - Output: :math:`(B, k_{max})`.

    Returns:
        The weights, on the device of ``k``.

    Raises:
        ValueError: ``k`` out of [1, k_max], unknown law, cap out of (0, 1] or infeasible
            (``cap * k < 1`` for some ``k >= 2``).
    """
    k_max = _check_k_max(k_max)
    k = check_tensor(k, "k")
    if k.dim() != 1:
        raise ValueError(f"Expected k of shape (B,), got {tuple(k.shape)}")
    k = _check_k(k, k.shape[0], k_max, k.device)
    law = _check_law(law)
    _check_cap(cap, k)
    if check_int(resample_rounds, "resample_rounds") < 0:
        raise ValueError(f"Expected resample_rounds >= 0, got {resample_rounds}")
    active = torch.arange(k_max, device=k.device) < k[:, None]
    weights = _draw_simplex(law, active, generator, dtype)
    if cap is not None:
        weights = _enforce_cap(weights, active, k >= 2, law, cap, generator, resample_rounds)
    single = torch.zeros_like(weights)
    single[:, 0] = 1.0
    return torch.where((k == 1)[:, None], single, weights)


def _enforce_cap(weights, active, capped_rows, law, cap, generator, rounds) -> Tensor:
    def violating(w: Tensor) -> Tensor:
        return capped_rows & (w.amax(dim=1) > cap)

    for _ in range(rounds):
        bad = violating(weights)
        if not bad.any():
            return weights
        fresh = _draw_simplex(law, active, generator, weights.dtype)
        weights = torch.where(bad[:, None], fresh, weights)
    bad = violating(weights)
    return torch.where(bad[:, None], _project_to_cap(weights, active, cap), weights)


# --------------------------------------------------------------------------- partners


def _distinct_ranks(batch: int, generator, device: torch.device) -> Tensor:
    """(B, B) random scores in [0, 1), all distinct within a row (a random permutation)."""
    noise = torch.rand(batch, batch, generator=generator, device=_noise_device(generator, device))
    return noise.to(device).argsort(dim=1).argsort(dim=1).to(torch.float32) / batch


def _identity_representatives(labels: Tensor, ranks: Tensor) -> Tensor:
    """(B, B) bool: sample j is the top-ranked sample of its identity in row i."""
    _, ids = torch.unique(labels, return_inverse=True)
    ids = ids.expand_as(ranks)
    best = ranks.new_full((ranks.shape[0], int(ids.max()) + 1), -1.0)
    best = best.scatter_reduce(1, ids, ranks, reduce="amax")
    return ranks == best.gather(1, ids)


def draw_partners(
    labels: Tensor,
    k_max: int,
    generator: torch.Generator | None = None,
    other_identities: bool = True,
) -> PartnerDraw:
    """Draw ``k_max - 1`` mixing partners from the batch for every anchor.

    Column 0 is the anchor itself. The other columns are picked by ranking every sample with
    a random score plus a priority tier and taking the top ``k_max - 1``:

    - with ``other_identities=True``: first one sample per other identity (so partners have
      pairwise distinct identities, each identity equally likely whatever its number of
      samples), then further samples of other identities, then samples of the anchor's own
      identity (never the anchor itself);
    - with ``other_identities=False``: any sample but the anchor, uniformly.

    Guarantees: partners of a row differ from the anchor and from each other whenever
    ``B - 1 >= k_max - 1``; they all have identities other than the anchor's whenever the
    batch holds at least ``k_max - 1`` such samples, and pairwise distinct identities whenever
    it holds ``k_max - 1`` other identities. When ``B - 1 < k_max - 1`` the ``B - 1`` other
    samples are repeated cyclically. Rows that fall back (a partner of the anchor's identity
    when ``other_identities``, or a repeat) are flagged in ``fallback`` for logging.

    Args:
        labels: identity label of every sample.
        k_max: number of columns (anchor + partners), >= 1.
        generator: source of randomness (seeded for reproducibility).
        other_identities: prefer partners of other identities than the anchor's.

    Shape:
        - labels: :math:`(B,)`.
        - Output: partners :math:`(B, k_{max})` int64 indices into the batch; fallback
          :math:`(B,)` bool.

    Returns:
        ``PartnerDraw(partners, fallback)`` on the device of ``labels``.

    Raises:
        ValueError: ``B < 2`` while ``k_max >= 2``.
    """
    labels = _check_labels(labels)
    k_max = _check_k_max(k_max)
    batch, device = labels.numel(), labels.device
    anchors = torch.arange(batch, device=device)
    if k_max == 1:
        return PartnerDraw(anchors[:, None], torch.zeros(batch, dtype=torch.bool, device=device))
    if batch < 2:
        raise ValueError(f"Mixing with k_max={k_max} needs a batch of at least 2 samples, got {batch}")
    # Two independent random orders: one elects each identity's representative, the other
    # ranks candidates within a tier (reusing the first would favour large identities).
    order = _distinct_ranks(batch, generator, device)
    same = labels[:, None] == labels[None, :]
    if other_identities:
        election = _distinct_ranks(batch, generator, device)
        representative = _identity_representatives(labels, election)
        tiers = torch.where(same, 1.0, torch.where(representative, 3.0, 2.0))
    else:
        tiers = torch.ones_like(order)
    is_anchor = torch.eye(batch, dtype=torch.bool, device=device)
    scores = (tiers + order).masked_fill(is_anchor, -torch.inf)
    available = min(k_max - 1, batch - 1)
    chosen = scores.topk(available, dim=1).indices
    repeated = available < k_max - 1
    if repeated:
        chosen = chosen[:, torch.arange(k_max - 1, device=device) % available]
    fallback = torch.full((batch,), repeated, dtype=torch.bool, device=device)
    if other_identities:
        fallback |= (labels[chosen] == labels[:, None]).any(dim=1)
    return PartnerDraw(torch.cat([anchors[:, None], chosen], dim=1), fallback)


# --------------------------------------------------------------------------- mixing


def draw_sign_mask(batch: int, shape: tuple[int, ...], generator: torch.Generator | None, device, dtype) -> Tensor:
    """Draw a random +-1 mask per coefficient from packed random bits.

    Each draw of the generator is a uniform byte whose 8 bits give 8 signs: 3.2-3.5 times
    faster than one ``randint`` per coefficient on a batch of 128 x 192 x 28 x 28
    (``benchmarks/bench_sign_mask.py``).

    Args:
        batch: number of samples.
        shape: shape of one sample.
        generator: generator the bits come from (its device draws them), or None.
        device: device of the returned mask.
        dtype: floating dtype of the returned mask.

    Shape:
        - Output: :math:`(batch, *shape)`.

    Returns:
        A tensor of +1 and -1, each with probability 1/2, independent per coefficient.
    """
    numel = batch * math.prod(shape)
    noise_device = _noise_device(generator, device)
    octets = torch.randint(0, 256, (-(-numel // 8), 1), generator=generator, device=noise_device, dtype=torch.uint8)
    bits = (octets >> torch.arange(8, device=noise_device, dtype=torch.uint8)) & 1
    sign = bits.flatten()[:numel].view(batch, *shape).to(device=device, dtype=dtype)
    return sign.mul_(2.0).sub_(1.0)


def sample_mixing(
    labels: Tensor,
    k: Tensor | int,
    k_max: int,
    law: str = "dirichlet",
    cap: float | None = DEFAULT_CAP,
    sign_shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    other_identities: bool = True,
    dtype: torch.dtype = torch.float32,
) -> MixingDraw:
    """All the random parts of one Frequency MixUp, drawn in a fixed order.

    Draws, in this order from ``generator``: the partners (:func:`draw_partners`), the
    weights (:func:`mix_weights`), and if ``sign_shape`` is given an InstaHide sign mask of
    independent fair +-1 per coefficient. The same seed gives the same draw. These are the
    secrets of a protected sample; :func:`apply_mixing` turns them into the sample.

    Args:
        labels: identity labels of the batch.
        k: constituents per sample in [1, k_max] (an int applies to every sample).
        k_max: number of columns, >= 1.
        law: weight law, ``"dirichlet"`` or ``"instahide"``.
        cap: largest weight for ``k >= 2`` (None: no cap).
        sign_shape: shape ``(C, h, w)`` of one sample to draw a sign mask for, or None.
        generator: source of randomness.
        other_identities: prefer partners of other identities.
        dtype: floating dtype of the weights and the sign mask.

    Shape:
        - labels, k: :math:`(B,)`.
        - Output: partners and weights :math:`(B, k_{max})`, sign :math:`(B, *sign\\_shape)`,
          fallback :math:`(B,)`.

    Returns:
        ``MixingDraw(partners, weights, sign, fallback)``; ``sign`` is None without
        ``sign_shape``.
    """
    labels = _check_labels(labels)
    k = _check_k(k, labels.numel(), _check_k_max(k_max), labels.device)
    partners, fallback = draw_partners(labels, k_max, generator, other_identities)
    weights = mix_weights(k, k_max, law, cap, generator, dtype=dtype)
    sign = None
    if sign_shape is not None:
        sign = draw_sign_mask(labels.numel(), tuple(sign_shape), generator, labels.device, dtype)
    return MixingDraw(partners, weights, sign, fallback)


class GroupDraw(NamedTuple):
    """A partition of a batch into mixing groups; see :func:`draw_groups`."""

    members: Tensor
    size: Tensor
    fallback: Tensor
    leftover: Tensor


def draw_groups(
    labels: Tensor, k: Tensor, k_max: int, generator: torch.Generator | None = None, k_min: int = 2
) -> GroupDraw:
    """Partition a batch into disjoint groups: every face is a constituent of one mix only.

    Faces are visited in a random order; each face not yet used starts a group of its own
    ``k`` (the policy's choice for it), filled with the next unused faces of identities not yet
    in the group; when too few remain, faces of an identity already in it (flagged in
    ``fallback``), and then a smaller group, but never one under ``k_min`` (the masker's smallest
    k): a face that would start one is not released (``leftover``), so no sample mixes fewer faces
    than the policy may choose. The members of a group are listed in a random order. About
    ``B / mean(k)`` groups come out of a batch of ``B``.

    Args:
        labels: identity label of every face.
        k: wanted group size of every face (used when the face starts a group), in [1, k_max].
        k_max: number of columns.
        generator: source of randomness.
        k_min: the smallest group released (a wanted k under it is taken as it is: k = 1 leaves a
            face un-mixed).

    Shape:
        - labels, k: :math:`(B,)`.
        - Output: members :math:`(G, k_{max})` indices into the batch (unused columns repeat
          column 0); size and fallback :math:`(G,)`; leftover :math:`(L,)`.

    Returns:
        ``GroupDraw(members, size, fallback, leftover)``, on the CPU.
    """
    labels = _check_labels(labels).cpu()
    k = _check_k(k, labels.numel(), _check_k_max(k_max), labels.device).cpu()
    return draw_groups_on_demand(labels, k.tolist().__getitem__, k_max, generator, k_min)


def draw_groups_on_demand(
    labels: Tensor, k_of: Callable[[int], int], k_max: int, generator: torch.Generator | None = None, k_min: int = 2
) -> GroupDraw:
    """:func:`draw_groups`, asking ``k_of(face)`` for the k of the faces that start a group only.

    A face that joins a group never uses its own k, so a k that is costly to draw (a strategy
    network's, in ``fmix mask``) is drawn about once per group; the draws and groups are those of
    ``draw_groups(labels, k, k_max, generator, k_min)`` with ``k[face] = k_of(face)``.

    Raises:
        ValueError: ``k_of`` gives a k outside [1, k_max].
    """
    labels = labels.cpu()
    batch = labels.numel()
    order = torch.randperm(batch, generator=generator).tolist()
    label_of = labels.tolist()
    used = [False] * batch
    groups, fallback, leftover = [], [], []
    for position, anchor in enumerate(order):
        if used[anchor]:
            continue
        want = k_of(anchor)
        if not 1 <= want <= k_max:
            raise ValueError(f"Expected k in [1, {k_max}], got {want}")
        used[anchor] = True
        group, seen = [anchor], {label_of[anchor]}
        rest = [i for i in order[position + 1 :] if not used[i]]
        for same_allowed in (False, True):
            for i in rest:
                if len(group) == want:
                    break
                if i not in group and (same_allowed or label_of[i] not in seen):
                    group.append(i)
                    seen.add(label_of[i])
        if len(group) < min(want, k_min):  # too few faces left for the smallest mix the policy may choose
            leftover.append(anchor)
            continue
        for i in group:
            used[i] = True
        fallback.append(len(seen) < len(group))
        groups.append(group)
    members = torch.zeros(len(groups), k_max, dtype=torch.long)
    for row, group in enumerate(groups):
        shuffled = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
        members[row] = torch.tensor(shuffled + [shuffled[0]] * (k_max - len(group)))
    size = torch.tensor([len(g) for g in groups], dtype=torch.long)
    return GroupDraw(members, size, torch.tensor(fallback, dtype=torch.bool), torch.tensor(leftover, dtype=torch.long))


def apply_mixing(
    x: Tensor, partners: Tensor, weights: Tensor, sign: Tensor | None = None, rescale: bool = False
) -> Tensor:
    """Mix samples with given partners, weights and sign mask (deterministic).

    ``out[g] = sign[g] * sum_j weights[g, j] * x[partners[g, j]]``; one output per row of
    ``partners`` (usually one per sample of the batch; one per group with :func:`draw_groups`), divided by
    ``sqrt(sum_j weights[b, j]^2)`` with ``rescale``: a mix of independent unit-variance
    channels then keeps unit variance, like an un-mixed face (without it a 2-mix has about half
    the variance of the faces the model is tested on). Uses only indexing (gather),
    multiply and add (a loop over the ``k_max`` columns, never over samples), so it traces and
    exports to ONNX. With weights ``(1, 0, ..., 0)``, ``partners[:, 0] = arange(B)`` and no sign
    the output equals ``x`` exactly.

    Args:
        x: masked samples, floating dtype.
        partners: indices into the batch; column 0 is normally the anchor.
        weights: mixing weights (cast to the dtype of ``x``).
        sign: optional +-1 mask applied after mixing.
        rescale: divide by the weights' L2 norm (variance-preserving mix).

    Shape:
        - x: :math:`(B, C, h, w)`.
        - partners, weights: :math:`(G, k_{max})`.
        - sign: :math:`(G, C, h, w)`.
        - Output: :math:`(G, C, h, w)`.

    Returns:
        The mixed samples.
    """
    _check_mixing(x, partners, weights, sign)
    weights = weights.to(dtype=x.dtype)[:, :, None, None, None]
    # x[index] rather than index_select: torch's CPU index_select copies large slices several times
    # slower (and slower still for a strided index column); the values are the same.
    mixed = weights[:, 0] * x[partners[:, 0]]
    for j in range(1, partners.shape[1]):
        mixed = mixed + weights[:, j] * x[partners[:, j]]
    if rescale:
        mixed = mixed / weights.square().sum(dim=1).sqrt()
    return mixed if sign is None else mixed * sign.to(dtype=x.dtype)


def mix_as_matrix(
    x: Tensor, partners: Tensor, weights: Tensor, sign: Tensor | None = None, rescale: bool = False
) -> Tensor:
    """:func:`apply_mixing` as one matrix product: the same mixes, up to float rounding.

    The weights go into a ``(G, B)`` mixing matrix (rescaled rows with ``rescale``) that multiplies
    the flattened batch: one pass over ``x`` whatever ``k_max``, where :func:`apply_mixing` gathers and
    adds a batch-sized copy per column (one thread, 64 x 174 x 28 x 28 faces: 29 ms against 232 ms
    at k = 4 and 347 ms at k = 6, ``benchmarks/bench_mixing.py``). Training mixes with it; the
    release and the ONNX graph keep :func:`apply_mixing` (its float order is what releases were
    pinned with).

    Args, Shape and Returns: those of :func:`apply_mixing`.
    """
    _check_mixing(x, partners, weights, sign)
    weights = weights.to(dtype=x.dtype)
    if rescale:
        weights = weights / weights.square().sum(dim=1, keepdim=True).sqrt()
    matrix = torch.zeros(partners.shape[0], x.shape[0], dtype=x.dtype, device=x.device)
    matrix.scatter_add_(1, partners.to(x.device), weights.to(x.device))
    mixed = (matrix @ x.reshape(x.shape[0], -1)).view(partners.shape[0], *x.shape[1:])
    return mixed if sign is None else mixed.mul_(sign.to(dtype=x.dtype))


def _check_mixing(x: Tensor, partners: Tensor, weights: Tensor, sign: Tensor | None) -> None:
    """The inputs of :func:`apply_mixing` and :func:`mix_as_matrix`: shapes and dtypes, or a ValueError naming them."""
    check_tensor(x, "x")
    check_shape_bchw(x, "x")
    check_float(x, "x")
    check_tensor(partners, "partners")
    check_tensor(weights, "weights")
    check_integer(partners, "partners")
    check_float(weights, "weights")
    if partners.dim() != 2 or weights.shape != partners.shape:
        raise ValueError(
            f"Expected partners and weights of shape (G, k_max), got {tuple(partners.shape)} and {tuple(weights.shape)}"
        )
    out_shape = (partners.shape[0], *x.shape[1:])
    if sign is not None and tuple(check_tensor(sign, "sign").shape) != out_shape:
        raise ValueError(f"Expected sign of shape {out_shape}, got {tuple(sign.shape)}")
