"""Training looped networks: protocols, the trainer, checkpoints, DDP, and the learned gate.

- :class:`EndToEnd` and :class:`Progressive` (Algorithm 1) say which loops train when.
- :class:`Trainer` runs them: seeded, logged to CSV / TensorBoard, checkpointed
  every epoch, resumable to the same final weights, and data-parallel under
  ``torchrun`` (:func:`init_distributed`).
- :func:`collect_rollouts`, :func:`train_gate` and :func:`temperature_sweep`
  train the exit gate by policy gradient on a frozen network and trace its
  accuracy / compute trade-off.
"""

from .allocator import tune_allocator
from .checkpoint import CheckpointError, ConfigMismatchError, load_checkpoint, save_checkpoint
from .config import PRECISIONS, TrainConfig, config_from_dict, config_to_dict, native_bfloat16
from .distributed import DistributedContext, cleanup_distributed, init_distributed, main_process_first
from .evaluation import evaluate, loss_metrics
from .gate import (
    GateConfig,
    GateResult,
    RolloutData,
    TradeoffPoint,
    collect_rollouts,
    temperature_sweep,
    tradeoff_point,
    train_gate,
)
from .log import MetricLogger
from .optim import OPTIMIZERS, SCHEDULES, register_optimizer, register_schedule
from .protocols import PROTOCOLS, EndToEnd, Phase, Progressive
from .trainer import Callback, EpochInfo, NonFiniteLossError, Trainer, TrainResult, set_epoch

__all__ = [
    "Trainer",
    "set_epoch",
    "TrainConfig",
    "PRECISIONS",
    "native_bfloat16",
    "tune_allocator",
    "TrainResult",
    "EpochInfo",
    "Callback",
    "NonFiniteLossError",
    "EndToEnd",
    "Progressive",
    "Phase",
    "PROTOCOLS",
    "config_to_dict",
    "config_from_dict",
    "CheckpointError",
    "ConfigMismatchError",
    "save_checkpoint",
    "load_checkpoint",
    "DistributedContext",
    "init_distributed",
    "cleanup_distributed",
    "main_process_first",
    "evaluate",
    "loss_metrics",
    "MetricLogger",
    "OPTIMIZERS",
    "SCHEDULES",
    "register_optimizer",
    "register_schedule",
    "RolloutData",
    "collect_rollouts",
    "GateConfig",
    "GateResult",
    "train_gate",
    "TradeoffPoint",
    "tradeoff_point",
    "temperature_sweep",
]
