"""Networks: IResNet backbones, margin heads and the strategy (policy) network (docs/design.md §3)."""

from fmix.models.heads import DEFAULT_MARGINS, KINDS, MarginHead
from fmix.models.iresnet import (
    DEFAULT_PRESETS,
    DEPTHS,
    STRIDE_PRESETS,
    IBasicBlock,
    IResNet,
    build_backbone,
    downsampled_side,
    resolve_strides,
    stage_widths,
)
from fmix.models.reinforce import (
    DualVariable,
    EmaBaseline,
    budget_price,
    effective_reward,
    expected_mean_k,
    policy_loss,
    reinforce_loss,
)
from fmix.models.strategy import DEFAULT_K_VALUES, ConfidenceSignal, StrategyNetwork

__all__ = [
    "DEFAULT_K_VALUES",
    "DEFAULT_MARGINS",
    "DEFAULT_PRESETS",
    "DEPTHS",
    "KINDS",
    "STRIDE_PRESETS",
    "ConfidenceSignal",
    "DualVariable",
    "EmaBaseline",
    "IBasicBlock",
    "IResNet",
    "MarginHead",
    "StrategyNetwork",
    "budget_price",
    "build_backbone",
    "downsampled_side",
    "effective_reward",
    "expected_mean_k",
    "policy_loss",
    "reinforce_loss",
    "resolve_strides",
    "stage_widths",
]
