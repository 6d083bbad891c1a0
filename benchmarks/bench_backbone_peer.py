"""fmix's IResNet-50 against insightface arcface_torch's iresnet50: one training step, side by side.

Times forward + backward + SGD step (momentum 0.9, weight decay 5e-4) of

- arcface_torch's ``iresnet50`` (imported from the file given on the command line: a copy of
  ``recognition/arcface_torch/backbones/iresnet.py``, never committed to this repository),
- fmix's ``iresnet50`` on the same 3 x 112 x 112 RGB batch (width 1, ``rgb112``, NHWC by default),
- fmix's ``iresnet50`` on its frequency input: 192 block-DCT channels at u = 8 (112 x 112, ``freq112``),

at the same batch and thread count, and prints seconds per step, images/s and the ratios. The two
RGB networks have the same parameters (checked: fmix loads arcface_torch's state dict through
:mod:`fmix.models.backbone_import` and must give the same embeddings), so the ratio is the
implementation's cost alone.

Usage: python benchmarks/bench_backbone_peer.py /tmp/arcface_iresnet.py [--batch 64] [--threads 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from torch import nn

from fmix.models.backbone_import import load_arcface_state_dict
from fmix.models.iresnet import build_backbone


def import_reference(path: Path):
    """The module at ``path`` (arcface_torch's backbones/iresnet.py)."""
    if not path.is_file():
        raise SystemExit(f"error: no such file: {path} (a copy of arcface_torch's backbones/iresnet.py)")
    spec = importlib.util.spec_from_file_location("arcface_iresnet_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "iresnet50"):
        raise SystemExit(f"error: {path} defines no iresnet50")
    return module


def step_seconds(net: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Mean seconds of one training step after a warm-up step."""
    net.train()
    optimizer = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4
    )
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = net(x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "reference", type=Path, help="Path of arcface_torch's backbones/iresnet.py (outside the repository)."
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=2, help="Timed steps per network (after one warm-up step).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = import_reference(args.reference)

    torch.manual_seed(0)
    peer = reference.iresnet50()
    ours = build_backbone("iresnet50", 3, 112, 512, 1.0, "rgb112")
    load_arcface_state_dict(ours, peer.state_dict(), "arcface_torch iresnet50")
    probe = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():  # untrained, the activations grow through 50 layers: compare relative to their size
        expected = peer.eval()(probe)
        difference = ((expected - ours.eval()(probe)).abs().max() / expected.abs().max()).item()
    print(
        f"same weights: largest embedding difference {difference:.1e} of the largest embedding value (batch 2, eval mode)"
    )
    if not difference < 1e-4:
        raise SystemExit("error: fmix's network does not compute arcface_torch's embeddings from the same weights")

    rgb = torch.rand(args.batch, 3, 112, 112) * 2 - 1
    frequency = torch.randn(args.batch, 192, 112, 112)
    results = {}
    results["arcface_torch iresnet50, RGB 3x112x112"] = step_seconds(peer, rgb, args.steps)
    results["fmix iresnet50, RGB 3x112x112"] = step_seconds(ours, rgb, args.steps)
    del peer, ours
    freq_net = build_backbone("iresnet50", 192, 112, 512, 1.0, "freq112")
    results["fmix iresnet50, 192 DCT channels, u=8 (112x112)"] = step_seconds(freq_net, frequency, args.steps)

    print(
        f"one training step (forward + backward + SGD), batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}, mean of {args.steps} after a warm-up:"
    )
    base = results["arcface_torch iresnet50, RGB 3x112x112"]
    for name, seconds in results.items():
        print(
            f"  {name:48s} {seconds:8.2f} s/step  {args.batch / seconds:7.1f} images/s  x{seconds / base:.2f} of arcface_torch's time"
        )


if __name__ == "__main__":
    main()
