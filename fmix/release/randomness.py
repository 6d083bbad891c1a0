"""Where the random parts of a release come from; none of it is ever written into the release.

- default: the OS CSPRNG (``os.urandom``) seeds every generator, shuffle and label numbering;
  nothing can regenerate them, not even the owner;
- a secret key (``--secret-key-file``, kept by the owner): every stream is derived from the key
  with HMAC-SHA256, so a research run is reproducible by whoever holds the key, and only that a
  key was used is recorded;
- an insecure recorded seed (``--insecure-seed``): the old scheme, kept only to give the un-mixing
  attacks (``fmix attack unmix``) a weak release to break. The seed is written into ``run.json``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from pathlib import Path

import torch

from fmix.params import MAX_SEED

MIN_KEY_BYTES = 16


def read_secret_key(path: str | Path, out_dir: str | Path | None = None) -> bytes:
    """Read a secret key file, refusing a short key or one stored inside the release folder.

    Args:
        path: the key file (any bytes, at least 16 of them; e.g. ``head -c 32 /dev/urandom``).
        out_dir: the release folder the key must stay out of.

    Returns:
        The key bytes.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"secret key {path} is a folder, not a key file")
    if not path.is_file():
        raise FileNotFoundError(f"secret key file not found: {path}")
    if out_dir is not None:
        out_root = Path(out_dir).resolve()
        if out_root == path.resolve().parent or out_root in path.resolve().parents:
            raise ValueError(
                f"the secret key {path} must not be inside the output folder {out_dir}: keep it where the release never goes"
            )
    key = path.read_bytes()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"secret key {path} has {len(key)} bytes, need at least {MIN_KEY_BYTES} (e.g. head -c 32 /dev/urandom > {path.name})"
        )
    return key


def check_name_key(key: bytes, source: str) -> bytes:
    """Refuse a name key shorter than a secret key (a short key lets anyone brute-force the names).

    Args:
        key: the key of the anonymised sample names.
        source: where it came from (``$FMIX_NAME_KEY``), for messages.

    Returns:
        The key.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"name key {source} has {len(key)} bytes, need at least {MIN_KEY_BYTES} (e.g. export {source.lstrip('$')}=$(head -c 24 /dev/urandom | base64))"
        )
    return key


def key_check_value(key: bytes) -> str:
    """A keyed check value of a secret key: tells two keys apart, reveals nothing that derives a stream."""
    return hmac.new(key, b"fmix:key-check", hashlib.sha256).hexdigest()[:16]


class ReleaseRandomness:
    """The random streams of one release: per-shard generators, the shuffle and the label numbering.

    Args:
        key: secret key (HMAC-derived streams), or None.
        insecure_seed: a seed that will be recorded in the release (weak on purpose), or None.
        context: what the key-derived streams are bound to (the inputs' hash), so one key gives
            unrelated streams for different inputs.

    With neither ``key`` nor ``insecure_seed`` every draw comes from the OS CSPRNG.
    """

    def __init__(self, key: bytes | None = None, insecure_seed: int | None = None, context: str = "") -> None:
        if key is not None and insecure_seed is not None:
            raise ValueError("give a secret key or an insecure seed, not both")
        if insecure_seed is not None and not 0 <= insecure_seed <= MAX_SEED:
            raise ValueError(f"--insecure-seed must be in [0, {MAX_SEED}], got {insecure_seed}")
        self.key, self.insecure_seed, self.context = key, insecure_seed, context

    @property
    def source(self) -> str:
        return "key" if self.key is not None else "insecure_seed" if self.insecure_seed is not None else "os"

    def record(self) -> dict:
        """What ``run.json`` may say about the randomness: the source, and the seed only when insecure."""
        if self.insecure_seed is not None:
            return {"source": "insecure_seed", "seed": self.insecure_seed}
        return {"source": self.source}

    def _digest(self, purpose: str) -> bytes:
        """HMAC-SHA256 of the context and ``purpose`` under the secret key (a key is required)."""
        return hmac.new(self.key, f"{self.context}:{purpose}".encode(), hashlib.sha256).digest()

    def _derive(self, purpose: str) -> int:
        if self.key is None:
            return int.from_bytes(os.urandom(8), "little")
        return int.from_bytes(self._digest(purpose)[:8], "little")

    def name_key(self) -> bytes:
        """Key of the keyed-hash sample names when the owner gives none.

        Derived from the secret key (a research run names its samples the same way again), from
        the insecure seed, or else 32 bytes of the OS CSPRNG that nobody keeps: the names then link
        to no face at all (the owner's ledger still lists each shard's faces).
        """
        if self.key is not None:
            return self._digest("names")
        if self.insecure_seed is not None:
            return hashlib.sha256(f"{self.insecure_seed}:{self.context}:names".encode()).digest()
        return os.urandom(32)

    def generator(self, shard: int) -> torch.Generator:
        """The CPU generator of one shard (policy noise, partners, weights, signs, permutations)."""
        if self.insecure_seed is not None:
            return torch.Generator().manual_seed(self.insecure_seed * 1_000_003 + shard)
        return torch.Generator().manual_seed(self._derive(f"shard:{shard}"))

    def shuffle(self, items: list) -> None:
        """Shuffle in place (which faces share a shard)."""
        if self.insecure_seed is not None:
            random.Random(self.insecure_seed).shuffle(items)
        elif self.key is None:
            random.SystemRandom().shuffle(items)
        else:
            random.Random(self._derive("order")).shuffle(items)

    def label_numbers(self, identities: list[str]) -> dict[str, int]:
        """Identity -> label: alphabetical ranks with an insecure seed, else a random permutation."""
        numbers = list(range(len(identities)))
        if self.insecure_seed is None:
            if self.key is None:
                random.SystemRandom().shuffle(numbers)
            else:
                random.Random(self._derive("labels")).shuffle(numbers)
        return dict(zip(identities, numbers))
