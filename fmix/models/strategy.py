"""The strategy (policy) network: how many faces to mix, per sample (docs/design.md §2.5, §3).

A small CNN reads the masked anchor and the training progress and outputs a categorical
distribution over ``k`` in ``k_values`` (default {2, ..., 6}). It is trained with REINFORCE
(:mod:`fmix.models.reinforce`). It is meant to be cheap next to the FR network: a 1x1
convolution first reduces the channels to ``hidden``, then two strided 3x3 convolutions,
global average pooling and a two-layer MLP that also sees the progress.

Per-sample signal [ours]: a linear *difficulty head* on the same features predicts how hard the
frozen FR network finds the anchor (its un-mixed loss, standardised within the batch), trained by
regression during the policy's turns (:meth:`StrategyNetwork.difficulty_loss`). The MLP reads that
prediction (detached) beside the progress, so k can depend on the sample, and the exported masker
needs nothing but the policy itself.

FR signal [ours]: the anchor's un-mixed loss, which decides how much a larger k raises its loss,
is mostly a property of its identity, which the masked face alone does not show (the difficulty
head hardly predicts it on held-out faces: ``experiments/policy_signal.py`` measures it). The frozen
FR network's *confidence*, the largest cosine between the anchor's embedding and any class centre,
needs no label and tracks that loss closely (the same benchmark). With ``signals=1`` the policy also reads it (:class:`ConfidenceSignal`),
standardised by running statistics (a batch norm without affine parameters, so a face's k does not
depend on the batch once exported) and fed both to the MLP and straight to the logits through a
linear map that starts at zero. The exported masker then holds the FR backbone and the class
centres beside the policy.

Budget price [ours]: the buffer ``k_price`` shifts the logits by ``-k_price * k``. The game sets
it after each policy step (on the batch) and at the end of each epoch (on a sample of the private
faces) so that the expected mean k is the budget (:func:`fmix.models.reinforce.budget_price`); the
exported masker carries it.

The last layer starts at zero, so the initial policy is uniform over ``k_values``.
"""

# Measured with experiments/policy_signal.py (docs/results/2026-11-29-issue-12-without-sign-mask.md): the difficulty head's held-out correlation with the
# un-mixed loss stays below 0.1; the confidence's is -0.93.

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.checks import check_float, check_int, check_integer, check_tensor, is_tracing

DEFAULT_K_VALUES = (2, 3, 4, 5, 6)


class StrategyNetwork(nn.Module):
    """Policy over the number of mixed faces ``k``.

    Args:
        in_channels: channels of the masked anchor.
        k_values: the actions, distinct ints >= 1 in increasing order.
        hidden: channels of the convolutions and width of the MLP.
        signals: per-sample inputs of the MLP from outside the network (0, or 1: the FR
            network's confidence, :class:`ConfidenceSignal`).

    Example:
        >>> import torch
        >>> policy = StrategyNetwork(36)
        >>> policy(torch.randn(4, 36, 14, 14), 0.5).shape
        torch.Size([4, 5])
    """

    def __init__(
        self,
        in_channels: int,
        k_values: tuple[int, ...] | list[int] = DEFAULT_K_VALUES,
        hidden: int = 32,
        signals: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        check_int(hidden, "hidden", minimum=1)
        if check_int(signals, "signals", minimum=0) > 1:
            raise ValueError(f"Expected signals 0 or 1, got {signals}")
        self.signals = signals
        if not isinstance(k_values, (tuple, list)) or not k_values:
            raise ValueError(f"Expected k_values to be a non-empty sequence of ints, got {k_values!r}")
        for k in k_values:
            check_int(k, "every entry of k_values", minimum=1)
        if list(k_values) != sorted(set(k_values)):
            raise ValueError(f"Expected k_values distinct and increasing, got {tuple(k_values)}")
        self.k_values = tuple(k_values)
        self.register_buffer("k_table", torch.tensor(self.k_values, dtype=torch.long))
        self.register_buffer("k_price", torch.zeros(()))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.difficulty = nn.Linear(hidden, 1)
        self.mlp = nn.Sequential(
            nn.Linear(hidden + 2 + signals, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, len(self.k_values))
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        if signals:
            self.signal_norm = nn.BatchNorm1d(signals, affine=False)
            self.signal_logits = nn.Linear(signals, len(self.k_values), bias=False)
            nn.init.zeros_(self.signal_logits.weight)

    # ----------------------------------------------------------------------- checks

    def _check_input(self, x: object) -> Tensor:
        x = check_tensor(x, "x")
        check_float(x, "x")
        if not is_tracing() and (x.dim() != 4 or x.shape[1] != self.in_channels):
            raise ValueError(f"Expected x of shape (B, {self.in_channels}, h, w), got {tuple(x.shape)}")
        return x

    def _progress_column(self, progress: float | Tensor, x: Tensor) -> Tensor:
        """Progress as a (B, 1) column in the dtype and on the device of ``x``."""
        batch = x.shape[0]
        if isinstance(progress, Tensor):
            check_float(progress, "progress")
            if progress.dim() == 0:
                progress = progress.expand(batch)
            if not is_tracing() and progress.shape != (batch,):
                raise ValueError(f"Expected progress of shape () or ({batch},), got {tuple(progress.shape)}")
            if not is_tracing() and progress.numel() and (progress.min() < 0 or progress.max() > 1):
                raise ValueError("Expected progress in [0, 1]")
            return progress.to(device=x.device, dtype=x.dtype).unsqueeze(1)
        if isinstance(progress, bool) or not isinstance(progress, (int, float)):
            raise TypeError(f"Expected progress to be a float or a tensor, got {type(progress).__name__}")
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"Expected progress in [0, 1], got {progress}")
        return x.new_full((batch, 1), float(progress))

    def _action_index(self, k: object, batch: int) -> Tensor:
        """Position of every ``k`` in ``k_values``."""
        k = check_tensor(k, "k")
        check_integer(k, "k")
        if k.shape != (batch,):
            raise ValueError(f"Expected k of shape ({batch},), got {tuple(k.shape)}")
        hits = k.to(self.k_table.device).unsqueeze(1) == self.k_table
        if not is_tracing() and not bool(hits.any(1).all()):
            raise ValueError(f"Expected every k in k_values={self.k_values}, got {sorted(set(k.tolist()))}")
        return hits.long().argmax(1)

    # ----------------------------------------------------------------------- policy

    def _signal_columns(self, signal: Tensor | None, x: Tensor) -> list[Tensor]:
        """The outside signal as a (B, 1) column (none without ``signals``)."""
        if (signal is None) != (self.signals == 0):
            raise ValueError(
                f"Expected a signal of shape ({x.shape[0]},) exactly when the network has signals (it has {self.signals})"
            )
        if signal is None:
            return []
        signal = check_tensor(signal, "signal")
        if not is_tracing() and signal.shape != (x.shape[0],):
            raise ValueError(f"Expected signal of shape ({x.shape[0]},), got {tuple(signal.shape)}")
        return [self.signal_norm(signal.to(device=x.device, dtype=x.dtype).unsqueeze(1))]

    def forward(self, x: Tensor, progress: float | Tensor, signal: Tensor | None = None) -> Tensor:
        """Logits over ``k_values``.

        Args:
            x: masked anchors.
            progress: training progress in [0, 1], one value or one per sample.
            signal: per-sample outside signal, given exactly when ``signals`` is 1.

        Shape:
            - x: :math:`(B, C, h, w)`.
            - progress: :math:`()` or :math:`(B,)`.
            - signal: :math:`(B,)`.
            - Output: :math:`(B, n_k)`.

        Returns:
            Unnormalised log-probabilities of each ``k``.
        """
        x = self._check_input(x)
        column = self._progress_column(progress, x)
        features = self.features(x)
        signals = self._signal_columns(signal, x)
        logits = self.mlp(torch.cat([features, column, self.difficulty(features).detach(), *signals], dim=1))
        logits = logits - self.k_price.to(logits.dtype) * self.k_table.to(logits.dtype)
        return logits + self.signal_logits(signals[0]) if signals else logits

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A policy saved before the budget price had no k_price: it loads with no shift.
        state_dict.setdefault(prefix + "k_price", torch.zeros(()))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def difficulty_loss(self, x: Tensor, difficulty: Tensor) -> Tensor:
        """Regression of the difficulty head on the FR network's per-sample difficulty.

        Args:
            x: masked anchors.
            difficulty: e.g. the frozen FR network's un-mixed loss per anchor (any scale: it is
                standardised within the batch).

        Shape:
            - x: :math:`(B, C, h, w)`, :math:`B \\geq 2`.
            - difficulty: :math:`(B,)`.
            - Output: :math:`()`.

        Returns:
            The smooth-L1 loss between the head's prediction and the batch z-scores.
        """
        x = self._check_input(x)
        difficulty = check_tensor(difficulty, "difficulty")
        if difficulty.shape != (x.shape[0],) or x.shape[0] < 2:
            raise ValueError(
                f"Expected difficulty of shape ({x.shape[0]},) for a batch of at least 2, got {tuple(difficulty.shape)}"
            )
        target = difficulty.detach().float().to(x.device)
        target = (target - target.mean()) / (target.std() + 1e-6)
        return F.smooth_l1_loss(self.difficulty(self.features(x)).squeeze(1).float(), target)

    def distribution(
        self, x: Tensor, progress: float | Tensor, signal: Tensor | None = None
    ) -> torch.distributions.Categorical:
        """The categorical policy over action indices (positions in ``k_values``).

        Args:
            x: masked anchors, :math:`(B, C, h, w)`.
            progress: training progress in [0, 1].
            signal: per-sample outside signal (see :meth:`forward`).

        Returns:
            ``Categorical`` with batch shape (B,), computed in float32.
        """
        return torch.distributions.Categorical(logits=self(x, progress, signal).float())

    def sample(
        self,
        x: Tensor,
        progress: float | Tensor,
        generator: torch.Generator | None = None,
        signal: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``k`` per sample.

        Args:
            x: masked anchors.
            progress: training progress in [0, 1].
            generator: source of randomness; the draw runs on its device and the result moves
                to the device of ``x``, so a CPU generator gives the same draw on CPU and CUDA.
            signal: per-sample outside signal (see :meth:`forward`).

        Shape:
            - x: :math:`(B, C, h, w)`.
            - Output: three tensors of shape :math:`(B,)`.

        Returns:
            ``(k, log_prob, entropy)``: the drawn k (int64), its log-probability and the
            policy's entropy, both float32 and differentiable.
        """
        dist = self.distribution(x, progress, signal)
        index = self.draw(dist, generator, x.device)
        return self.k_table[index], dist.log_prob(index), dist.entropy()

    @staticmethod
    def draw(dist: torch.distributions.Categorical, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """One action index per sample of ``dist``, drawn on the generator's device, returned on ``device``."""
        probs = dist.probs.detach()
        if generator is not None:
            probs = probs.to(generator.device)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)

    def greedy(self, x: Tensor, progress: float | Tensor, signal: Tensor | None = None) -> Tensor:
        """The most probable ``k`` per sample (ties: the smallest k).

        Args:
            x: masked anchors, :math:`(B, C, h, w)`.
            progress: training progress in [0, 1].
            signal: per-sample outside signal (see :meth:`forward`).

        Returns:
            k of shape :math:`(B,)`, int64.
        """
        return self.k_table[self(x, progress, signal).argmax(1)]

    def evaluate_actions(
        self, x: Tensor, progress: float | Tensor, k: Tensor, signal: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Log-probability of given actions, for a policy step on ``k`` drawn earlier.

        Args:
            x: masked anchors.
            progress: training progress in [0, 1].
            k: actions, each in ``k_values``.
            signal: per-sample outside signal (see :meth:`forward`).

        Shape:
            - x: :math:`(B, C, h, w)`.
            - k: :math:`(B,)`.
            - Output: two tensors of shape :math:`(B,)`.

        Returns:
            ``(log_prob, entropy)``, float32 and differentiable.
        """
        dist = self.distribution(x, progress, signal)
        index = self._action_index(k, x.shape[0]).to(x.device)
        return dist.log_prob(index), dist.entropy()


class ConfidenceSignal(nn.Module):
    """The FR network's confidence in a masked face: the largest cosine to any class centre.

    It needs no label, so the exported masker can compute it. The modules are used as given (the
    trainer's live, frozen network): each call runs them in eval mode without gradients and puts
    back their training mode.

    Args:
        backbone: the FR backbone (masked faces -> embeddings).
        head: the margin head (:meth:`fmix.models.MarginHead.cosines`).

    Shape:
        - masked: :math:`(B, C, h, w)`.
        - Output: :math:`(B,)`, in [-1, 1].
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, masked: Tensor) -> Tensor:
        modes = [module.training for module in (self.backbone, self.head)]
        self.backbone.eval()
        self.head.eval()
        try:
            with torch.no_grad():
                return self.head.cosines(self.backbone(masked)).amax(1).to(masked.dtype)
        finally:
            self.backbone.train(modes[0])
            self.head.train(modes[1])
