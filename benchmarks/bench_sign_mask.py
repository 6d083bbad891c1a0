"""What the sign mask costs: drawing it, and one step of the adaptive game with and without it.

Side by side in one run, on one thread, for a training batch of encoded faces (192 x 28 x 28 at
u = 2):

- the draw: one ``randint`` per coefficient (the earlier way) against packed random bytes
  (:func:`fmix.freq.draw_sign_mask`);
- a mix of the batch (:meth:`fmix.masker.protection.Protection.protect_encoded`) with and
  without the sign mask: what training saves by skipping the mask its network cannot see
  (it reads ``|x|``). The policy step of the game mixes the batch at every k (5 mixes).

Measured here (2 cores, one thread, batch 128): the draw 219 ms -> 68 ms (3.2x); a mix at k = 4
523 ms with the mask, 423 ms without; 497 ms saved per policy step.

Usage: python benchmarks/bench_sign_mask.py [--batch 128] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from fmix.freq import draw_sign_mask
from fmix.masker.protection import MixingConfig, Protection

SHAPE = (192, 28, 28)


def best_of(repeats: int, fn) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def per_coefficient(batch: int, generator: torch.Generator) -> torch.Tensor:
    """The earlier draw: one ``randint`` per coefficient."""
    return torch.randint(0, 2, (batch, *SHAPE), generator=generator).to(torch.float32) * 2.0 - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *SHAPE, generator=generator)
    labels = torch.arange(args.batch) % 32

    old = best_of(args.repeats, lambda: per_coefficient(args.batch, generator))
    new = best_of(args.repeats, lambda: draw_sign_mask(args.batch, SHAPE, generator, "cpu", torch.float32))
    print(
        f"draw of a {args.batch} x {' x '.join(map(str, SHAPE))} sign mask: randint per coefficient {old * 1e3:.0f} ms, packed bytes {new * 1e3:.0f} ms ({old / new:.1f}x faster)"
    )

    signed = Protection(None, MixingConfig(6, sign_flip=True))
    unsigned = Protection(None, MixingConfig(6, sign_flip=False))
    with_mask = best_of(args.repeats, lambda: signed.protect_encoded(x, labels, 4, generator))
    without = best_of(args.repeats, lambda: unsigned.protect_encoded(x, labels, 4, generator))
    print(
        f"a mix of the batch (k = 4): with the sign mask {with_mask * 1e3:.0f} ms, without {without * 1e3:.0f} ms ({with_mask / without:.2f}x)"
    )
    print(
        f"per policy step (5 mixes, one per k): {5 * (with_mask - without) * 1e3:.0f} ms saved by skipping the mask in training"
    )


if __name__ == "__main__":
    main()
