"""What mixing a training batch costs: the column loop against one matrix product, side by side.

For a training batch of encoded faces (the quick profile's 174 kept channels at u = 2: 174 x 28 x 28),
at every k: :func:`fmix.freq.apply_mixing` (one gather, multiply and add of a batch-sized copy per
column; the release and the ONNX graph use it) against :func:`fmix.freq.mixing.mix_as_matrix` (the
weights in a (B, B) matrix, one product; training uses it), on one thread, with the largest
difference between the two.

Usage: python benchmarks/bench_mixing.py [--batch 64] [--channels 174] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from bench_sign_mask import best_of  # a sibling script: benchmarks/ is on sys.path when run

from fmix.freq import apply_mixing, sample_mixing
from fmix.freq.mixing import mix_as_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=174)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    shape = (args.channels, 28, 28)
    x = torch.randn(args.batch, *shape, generator=generator)
    labels = torch.arange(args.batch) % 32
    print(f"batch {args.batch} x {' x '.join(map(str, shape))}, {args.threads} thread(s), best of {args.repeats}")
    print("| k | column loop ms | matrix product ms | ratio | largest difference |")
    print("|---|---|---|---|---|")
    for k in range(2, 7):
        draw = sample_mixing(labels, k, k, "dirichlet", 0.65, shape, generator)
        mix = (x, draw.partners, draw.weights, draw.sign, True)
        loop, matrix = (
            best_of(args.repeats, lambda: apply_mixing(*mix)),
            best_of(args.repeats, lambda: mix_as_matrix(*mix)),
        )
        difference = (apply_mixing(*mix) - mix_as_matrix(*mix)).abs().max().item()
        print(f"| {k} | {loop * 1e3:.1f} | {matrix * 1e3:.1f} | {loop / matrix:.1f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
