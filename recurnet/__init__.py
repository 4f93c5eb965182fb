"""recurnet: dynamic recursion for timm vision backbones.

``loopify`` cuts any timm backbone at a stage into an extractor, run once, and
a refiner that runs in a loop with per-iteration norms, feedback from its own
output, uncertainty heads, and per-sample exit policies.
"""

from .cost import ComponentCost, CostModel, count_macs, count_params
from .feedback import FEEDBACK, AttentionFeedback, Feedback, FeatureFeedback, NoFeedback, register_feedback
from .heads import UncertaintyHead, UncertaintyOutput
from .looped import WARM_UP_BATCHES, LoopedNet, UnrolledLoop, loopify, simulate_exits
from .losses import LoopLoss, LoopLossOutput, LossTerm, gaussian_uncertainty_loss, l1_uncertainty_loss
from .output import LoopOutput
from .policies import (
    POLICIES,
    ComputeBudget,
    ExitPolicy,
    FixedLoops,
    LearnedGate,
    LoopState,
    VarianceThreshold,
    build_policy,
    register_policy,
)
from .split import SplitError, split_backbone
from .training import (
    EndToEnd,
    GateConfig,
    Progressive,
    TrainConfig,
    Trainer,
    collect_rollouts,
    temperature_sweep,
    train_gate,
)

__all__ = [
    "loopify",
    "LoopedNet",
    "UnrolledLoop",
    "LoopOutput",
    "simulate_exits",
    "WARM_UP_BATCHES",
    "split_backbone",
    "SplitError",
    "Feedback",
    "AttentionFeedback",
    "FeatureFeedback",
    "NoFeedback",
    "FEEDBACK",
    "register_feedback",
    "UncertaintyHead",
    "UncertaintyOutput",
    "ExitPolicy",
    "LoopState",
    "FixedLoops",
    "VarianceThreshold",
    "LearnedGate",
    "ComputeBudget",
    "POLICIES",
    "build_policy",
    "register_policy",
    "CostModel",
    "ComponentCost",
    "count_macs",
    "count_params",
    "LoopLoss",
    "LossTerm",
    "LoopLossOutput",
    "gaussian_uncertainty_loss",
    "l1_uncertainty_loss",
    "Trainer",
    "TrainConfig",
    "EndToEnd",
    "Progressive",
    "GateConfig",
    "collect_rollouts",
    "train_gate",
    "temperature_sweep",
]

__version__ = "0.1.0"
