"""``dpsgd``: DP-SGD (Abadi et al., 2016) through opacus, on RGB faces, with epsilon reported at ``train.dpsgd.delta``.

The network is the ``none`` baseline's, with every batch norm replaced by group norm through
opacus' ``ModuleValidator.fix`` (batch statistics mix the samples, so per-sample gradients would not
bound one face's influence). ``PrivacyEngine.make_private`` clips each sample's gradient to
``train.dpsgd.max_grad_norm`` and adds Gaussian noise of ``train.dpsgd.noise_multiplier`` times
that norm; its RDP accountant turns the steps into epsilon at ``train.dpsgd.delta``, written to
``train_summary.json`` and ``model.pt`` (``privacy``). The class centres of the margin head get
their per-sample gradients from ``torch.func`` (:func:`margin_head_grad_sample`). Batches are the
trainer's shuffled fixed-size batches, not Poisson samples: the accountant's bound (sampling rate
B / N) is the usual approximation for them, as ``privacy`` says. One process only (no DDP).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmix._optional import require
from fmix.methods.base import Method, RunContext
from fmix.models.heads import MarginHead, margin_loss
from fmix.params import MixingParams

require("opacus", "dp")  # before the imports below: a missing opacus names the extra that installs it
from opacus import PrivacyEngine  # noqa: E402
from opacus.grad_sample import register_grad_sampler  # noqa: E402
from opacus.validators import ModuleValidator  # noqa: E402

ACCOUNTANT = "rdp"


@register_grad_sampler(MarginHead)
def margin_head_grad_sample(
    layer: MarginHead, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradients of the class centres: ``backprops[b] * d loss_b / d centres``.

    Args:
        layer: the head.
        activations: its inputs (embeddings, labels, weights).
        backprops: the gradient of the loss with respect to each sample's output.

    Shape:
        - backprops: :math:`(B,)`.
        - Output: the centres' per-sample gradients :math:`(B, C, E)`.
    """
    embeddings, labels, weights = activations

    def one(centres: Tensor, embedding: Tensor, label: Tensor, weight: Tensor) -> Tensor:
        return margin_loss(centres, embedding[None], label[None], weight[None], layer.kind, layer.s, layer.m)[0]

    grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0, 0))(
        layer.weight.detach(), embeddings, labels, weights
    )
    return {layer.weight: grads * backprops.reshape(-1, 1, 1).to(grads.dtype)}


class _ExplicitWeights(nn.Module):
    """The FR network, called with explicit label weights (opacus records every input of the head)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is None:
            labels, weights = labels[:, None], torch.ones(labels.shape[0], 1, device=x.device)
        return self.net(x, labels, weights)


class DpSgd(Method):
    name = "dpsgd"
    summary = "RGB faces, DP-SGD (opacus: per-sample clipping and Gaussian noise; batch norm replaced by group norm)"
    net_fix = "opacus"

    def check(self, mixing: MixingParams, world: int) -> None:
        if world > 1:
            raise ValueError(
                "method 'dpsgd' trains in one process (opacus' accountant sees one optimiser): drop torchrun"
            )

    def prepare_net(self, net: nn.Module) -> nn.Module:
        fixed = ModuleValidator.fix(net)
        problems = ModuleValidator.validate(fixed, strict=False)
        if problems:
            raise ValueError(f"opacus cannot train this network privately: {problems[0]}")
        return fixed

    def setup(self, ctx: RunContext) -> None:
        """Make the run private: the model and the optimiser become the privacy engine's wrappers."""
        settings = self.params.dpsgd
        indices = torch.utils.data.TensorDataset(torch.arange(len(ctx.faces)))
        loader = torch.utils.data.DataLoader(
            indices, batch_size=ctx.params.batch_size, drop_last=True
        )  # only its sampling rate is used
        self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        ctx.model, ctx.optimizer, _ = self.engine.make_private(
            module=_ExplicitWeights(ctx.net),
            optimizer=ctx.optimizer,
            data_loader=loader,
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            poisson_sampling=False,
        )

    def state_dict(self) -> dict:
        return {"history": [list(step) for step in self.engine.accountant.history]}

    def load_state_dict(self, state: dict) -> None:
        self.engine.accountant.history = [tuple(step) for step in state["history"]]

    def privacy(self, ctx: RunContext) -> dict:
        settings, accountant = self.params.dpsgd, self.engine.accountant
        steps = sum(step[2] for step in accountant.history)
        return {
            "mechanism": f"DP-SGD (opacus {ACCOUNTANT.upper()} accountant; example-level, add/remove neighbours)",
            "epsilon": float(accountant.get_epsilon(delta=settings.delta)) if steps else 0.0,
            "delta": settings.delta,
            "noise_multiplier": settings.noise_multiplier,
            "max_grad_norm": settings.max_grad_norm,
            "sample_rate": accountant.history[0][1] if steps else None,
            "steps": steps,
            "sampling": "shuffled fixed-size batches, not Poisson: the accountant's subsampled bound is the usual approximation",
        }
