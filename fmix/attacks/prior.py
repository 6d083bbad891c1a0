"""The attackers' prior: one inversion network trained once on a masking without mixing, shared by its attacks.

Every mixed entry of a sweep masks with the same channels, statistics and sign mask; only the
mixing differs. The attack check of each entry (the white-box attack on the masking un-mixed) and
the release's aggregation attack all train the same network on the same task. ``fmix attack
prior`` trains it once, on public faces, at a budget of its own (``attack.prior_steps``,
``attack.prior_seconds``), and each attack starts from it (:mod:`fmix.attacks.run`,
:mod:`fmix.attacks.aggregate`):

- the check is the prior itself on the private faces un-mixed (no further training);
- ``transfer``: the prior applied to the mixes as they are (the attacker of issue 30: a network
  of un-mixed faces applied to mixes names more than one trained on mixes);
- the white-box attacker fine-tunes the prior on the mixes for ``attack.steps``.

A prior serves only the masking it was trained on (:func:`masking_key`): an attack of another
masking trains from scratch and its record says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from fmix.attacks.protectors import MaskerProtector, Protector, sign_blind
from fmix.attacks.reconstruction import AttackConfig, ReconstructionAttack, fit_inverter
from fmix.data.faces import load_face_set
from fmix.masker.build import masker_from_metadata, read_masker_metadata
from fmix.masker.metadata import field_digest
from fmix.masker.protection import Protection
from fmix.models.checkpoint import load_checkpoint, save_checkpoint
from fmix.params import AttackParams

PRIOR_FORMAT = "fmix-attack-prior/1"
ANOTHER_MASKING = "the prior inverts another masking: these attackers trained from scratch"
# The masker fields that decide a face's masking without mixing (the policy and k only act in mixing).
MASKING_FIELDS = ("input_size", "upsample", "kept_channels", "channel_mean", "channel_std")


def masking_key(metadata: dict[str, str], sign_masked: bool) -> str:
    """A digest of the un-mixed masking as the attackers read it: the masker's transform and channels,
    its channel permutation if any, and ``|x|`` under a sign mask.

    Args:
        metadata: an exported masker's metadata (:func:`~fmix.masker.build.read_masker_metadata`).
        sign_masked: the attackers read ``|x|``.

    Returns:
        16 hex digits; equal for maskers that differ only in their mixing law, k or policy.
    """
    values = {key: json.loads(metadata[key]) for key in MASKING_FIELDS}
    mixing = json.loads(metadata["mixing"]) or {}
    values |= {"permute_channels": bool(mixing.get("permute_channels")), "sign_masked": sign_masked}
    return field_digest(values)[:16]


def unmixed_protector(masker_path: str | Path) -> tuple[Protector, bool, dict[str, str]]:
    """The attack check's protection of a masker: its masking without mixing, read as the attackers read it.

    The same construction as :func:`fmix.attacks.run.masker_target`'s ``unmixed`` protector seen
    through :meth:`~fmix.attacks.run.AttackTarget.as_attackers_see`: the masker's transform, kept
    channels and statistics (and its channel permutation, if its mixing has one), k = 1, and
    ``|x|`` when the mixing has a sign mask. The k policy plays no part without mixing.

    Args:
        masker_path: the exported masker that made the release.

    Returns:
        ``(protector, sign_masked, metadata)``.

    Raises:
        FileNotFoundError: no such masker.
        ValueError: not a masker of ``fmix export``.
    """
    metadata = read_masker_metadata(masker_path)
    masker = masker_from_metadata(metadata)
    mixing = Protection.from_metadata(metadata, masker).mixing
    protector: Protector = MaskerProtector(masker, mixing, mix=False)
    sign_masked = mixing is not None and mixing.sign_flip
    return (sign_blind(protector) if sign_masked else protector), sign_masked, metadata


class AttackPrior(NamedTuple):
    """A loaded prior: its networks, the masking they invert, and what they cost.

    Attributes:
        attack: the trained attack (:meth:`ReconstructionAttack.from_state`); copy it before :meth:`fit`.
        key: :func:`masking_key` of its masking.
        steps: its training steps.
        cpu_seconds: its training time on the budget clock.
        path: the file it came from.
    """

    attack: ReconstructionAttack
    key: str
    steps: int
    cpu_seconds: float
    path: str

    def info(self, used: bool, reason: str = "") -> dict:
        """What a record says of the prior: used or why not, its file, steps and seconds."""
        out = {"path": self.path, "used": used, "steps": self.steps, "cpu_seconds": self.cpu_seconds}
        return out | ({"reason": reason} if reason else {})


def train_prior(
    masker_path: str | Path,
    aligned: str | Path,
    splits: str | Path,
    out_path: str | Path,
    params: AttackParams,
    network: AttackConfig | None = None,
) -> dict:
    """Train the inversion network of a masker's masking without mixing on the public faces; writes ``out_path``.

    Args:
        masker_path: the exported masker (its mixing's sign mask says whether attackers read ``|x|``).
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split`` (``public.csv``: the attacker's faces).
        out_path: destination file (a checkpoint, written atomically).
        params: the ``attack`` section: ``prior_steps`` and ``prior_seconds`` (whichever comes
            first), batch size, seed and device.
        network: inversion-network settings (default: :meth:`AttackConfig.from_params`).

    Returns:
        A summary: ``key``, ``steps``, ``cpu_seconds``, ``last_l1``.
    """
    protector, sign_masked, metadata = unmixed_protector(masker_path)
    public = load_face_set(aligned, Path(splits) / "public.csv")
    attack, took = fit_inverter(
        network or AttackConfig.from_params(params),
        public.chw_images(),
        protector,
        public.labels,
        params.prior_steps,
        params.prior_seconds,
    )
    summary = {"key": masking_key(metadata, sign_masked), **took, "last_l1": attack.history[-1]["l1"]}
    save_checkpoint({"format": PRIOR_FORMAT, **summary, "attack": attack.state_dict()}, out_path)
    return summary


def load_prior(path: str | Path, network: AttackConfig) -> AttackPrior:
    """Read a prior of :func:`train_prior`, to continue with ``network``'s device and clock.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a prior of ``fmix attack prior``, or trained with other network settings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attack prior not found: {path}")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != PRIOR_FORMAT:
        raise ValueError(f"{path} is not an attack prior of `fmix attack prior` (format {PRIOR_FORMAT})")
    try:
        attack = ReconstructionAttack.from_state(state["attack"], network)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; train the prior again with this attack section") from None
    return AttackPrior(attack, state["key"], state["steps"], state["cpu_seconds"], str(path))


def unmixed_inverter(
    protector: Protector,
    key: str,
    public_images: Tensor,
    public_labels: Tensor,
    params: AttackParams,
    network: AttackConfig,
    prior: AttackPrior | None = None,
) -> tuple[ReconstructionAttack, dict]:
    """The inverter of a masking without mixing: the prior when it is of this masking, else one trained here.

    Args:
        protector: the masking without mixing, as the attackers read it (:func:`unmixed_protector`).
        key: :func:`masking_key` of that masking.
        public_images: the attacker's faces, :math:`(N, 3, H, W)` in [0, 255].
        public_labels: their identities, :math:`(N,)`.
        params: the ``attack`` section: the budget (``steps``, ``seconds``) of an inverter trained here.
        network: inversion-network settings.
        prior: the shared prior, if any.

    Returns:
        ``(inverter, info)``: info holds ``steps``, ``cpu_seconds`` and, given a prior, ``prior``
        (used, or why not).
    """
    if prior is not None and prior.key == key:
        return prior.attack, {"steps": prior.steps, "cpu_seconds": prior.cpu_seconds, "prior": prior.info(True)}
    inverter, info = fit_inverter(network, public_images, protector, public_labels, params.steps, params.seconds)
    if prior is not None:
        info["prior"] = prior.info(False, ANOTHER_MASKING)
    return inverter, info
