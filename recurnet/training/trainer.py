"""The training loop: phases of a protocol, checkpoints, resume, DDP.

Batches are dicts: the images under ``config.input_key`` (``"image"``) as
``(B, C, H, W)`` and the targets under the keys the loss reads (``torch``'s
default collate turns a dataset of dicts into this). Every step runs the
network with ``exit="all"`` and ``loops=phase.loops``, so every sample
passes every iteration and the loss sums over loops.

Reproducibility and resume. A fresh run seeds torch, numpy and Python with
``config.seed``; the network must be built by the caller (seed before
building it). The order of epoch ``k`` (counted over all phases) is a
function of ``(seed, k)`` alone: a ``DistributedSampler`` (one replica
without DDP) shuffles with ``seed + k`` and the DataLoader's generator, which
seeds worker processes, is reseeded with :func:`~recurnet.training.rng.epoch_seed`
``(seed, k)``. A checkpoint written at the end of every epoch holds the
weights, optimizer, schedule, the global generators' states and the position
``(phase, epoch)``; ``fit(resume=path)`` restores them all and reaches the
same final weights as a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..output import LoopOutput
from .allocator import tune_allocator
from .checkpoint import CheckpointError, check_config, ensure_writable, load_checkpoint, save_checkpoint
from .config import TrainConfig, config_to_dict, native_bfloat16
from .distributed import DistributedContext, current_context, unwrap
from .ema import WeightAverage
from .log import MetricLogger, check_tensorboard, make_progress
from .optim import OPTIMIZERS, SCHEDULES
from .protocols import Phase, apply_frozen_modes, prepare_phase
from .rng import epoch_seed, rng_state, seed_everything, set_rng_state

__all__ = ["Trainer", "TrainResult", "EpochInfo", "Callback", "LossResult", "NonFiniteLossError", "set_epoch"]


def set_epoch(dataset: Dataset, epoch: int) -> int:
    """Call ``set_epoch(epoch)`` on ``dataset`` and every dataset it wraps.

    Datasets that draw augmentation per epoch define ``set_epoch``; wrappers are
    followed through ``.dataset`` (``Subset`` and similar) and ``.datasets``
    (``ConcatDataset``). The trainer calls this at the start of every epoch.

    Returns:
        How many datasets received the call.

    Examples:
        >>> class Augmented(torch.utils.data.Dataset):
        ...     epoch = 0
        ...     def set_epoch(self, epoch): self.epoch = epoch
        >>> inner = Augmented()
        >>> set_epoch(torch.utils.data.Subset(inner, [0]), 3), inner.epoch
        (1, 3)
    """
    count = 0
    for d in _walk(dataset):
        if callable(getattr(d, "set_epoch", None)):
            d.set_epoch(epoch)  # idempotent, so a wrapper that forwards it too does no harm
            count += 1
    return count


def _walk(dataset):
    seen: set[int] = set()
    stack = [dataset]
    while stack:
        d = stack.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        yield d
        stack.extend(getattr(d, "datasets", None) or [])
        stack.append(getattr(d, "dataset", None))


class LossResult(Protocol):
    """What a training loss returns: a dataclass with ``total`` (scalar with gradients).

    Optional: ``scalars() -> dict[str, float]`` for logs and ``nonfinite() -> list[str]``
    naming the parts that are not finite (:class:`recurnet.losses.LoopLossOutput` has both).
    """

    total: torch.Tensor


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the offending terms."""


@dataclass(frozen=True)
class EpochInfo:
    """Handed to callbacks at the end of every epoch.

    Attributes:
        phase: phase index.
        epoch: epochs completed in this phase (1 after the first).
        global_epoch: epochs completed over all phases.
        global_step: optimizer steps completed over all phases.
        loops: the phase's loop count (iterations ``0..loops`` ran).
        train_loss: mean training loss of the epoch on this process.
    """

    phase: int
    epoch: int
    global_epoch: int
    global_step: int
    loops: int
    train_loss: float


#: ``callback(trainer, info) -> metrics or None``, called on every rank at the end of every epoch,
#: before the checkpoint is written. Returned metrics are logged (by rank 0) under their names.
Callback = Callable[["Trainer", EpochInfo], Mapping[str, float] | None]


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        phase: phase of the last completed epoch.
        epoch: epochs completed in that phase.
        global_step: optimizer steps completed over the whole run.
        finished: True when every phase is complete.
        history: one dict per epoch run in this call (``phase``, ``epoch``, ``train/epoch_loss``,
            ``train/samples_per_s`` and the callbacks' metrics).
        checkpoint: path of the last checkpoint written (None without ``out_dir``).
    """

    phase: int
    epoch: int
    global_step: int
    finished: bool
    history: list[dict[str, float]]
    checkpoint: Path | None


def _resolve_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{context.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{context.local_rank}")
    return device


def _plain(value, where: str):
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{where} holds a {type(value).__name__}; run_config must be plain data (numbers, strings, ...)")


class Trainer:
    """Trains a :class:`recurnet.LoopedNet` with a protocol, checkpoints and optional DDP.

    Args:
        model: the network; moved to the configured device.
        loss: ``loss(output: LoopOutput, batch: dict) -> LossResult`` (e.g. :class:`recurnet.losses.LoopLoss`).
            A loss with a true ``uses_feedback`` attribute gets the feedback signals too
            (``output.feedback``, see :attr:`recurnet.losses.LoopLoss.uses_feedback`).
        train_data: a map-style dataset of dicts (see the module docstring).
        config: the :class:`TrainConfig`.
        callbacks: :data:`Callback` functions run at the end of every epoch (evaluation, ...).
        run_config: plain-data description of the experiment (model name, data, ...) stored in
            checkpoints and compared on resume, like the training config.

    Raises:
        CheckpointError: when ``config.out_dir`` cannot be written (before any training).
        ValueError: when the dataset gives no batch.

    Examples:
        >>> import recurnet
        >>> from recurnet.losses import LoopLoss, LossTerm
        >>> from recurnet.training import EndToEnd, TrainConfig
        >>> net = recurnet.loopify("test_resnet", stage=2, max_loops=1, check_size=(32, 32),
        ...                        heads={"y": lambda c: nn.Linear(c, 1)})
        >>> data = [{"image": torch.randn(3, 32, 32), "target": torch.zeros(1)} for _ in range(8)]
        >>> config = TrainConfig(EndToEnd(epochs=2), batch_size=4, progress=False)
        >>> Trainer(net, LoopLoss([LossTerm("y", "target")]), data, config).fit().global_step
        4

        With ``out_dir`` set, a stopped run continues with
        ``Trainer(...same arguments...).fit(resume=trainer.checkpoint_path)``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[LoopOutput, Mapping[str, Any]], LossResult],
        train_data: Dataset,
        config: TrainConfig,
        *,
        callbacks: Sequence[Callback] = (),
        run_config: Mapping[str, Any] | Any = None,
    ):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not hasattr(model, "max_loops"):
            raise TypeError(f"model must be a recurnet LoopedNet, got {type(model).__name__}")
        self.config = config
        self.context = current_context()
        self.device = _resolve_device(config.device, self.context)
        if config.precision == "bfloat16" and not native_bfloat16(self.device):
            warnings.warn(f"precision 'bfloat16' on {self.device}, which does not compute bfloat16 natively: the "
                          "forward is emulated and runs many times slower than float32; train with "
                          "precision='float32' here", RuntimeWarning, stacklevel=2)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loss = loss.to(self.device) if isinstance(loss, nn.Module) else loss
        self.callbacks = list(callbacks)
        self.run_config = _plain(run_config or {}, "run_config")
        self.phases: list[Phase] = config.protocol.phases(model.max_loops)
        self._base_trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        if self.out_dir is not None and self.context.is_main:
            ensure_writable(self.out_dir / "checkpoints")
            if config.tensorboard:
                check_tensorboard()
        self.train_data = train_data
        self._sampler = DistributedSampler(
            train_data, num_replicas=self.context.world_size, rank=self.context.rank, shuffle=True, seed=config.seed
        )
        self._generator = torch.Generator()
        self.loader = DataLoader(
            train_data,
            batch_size=config.batch_size,
            sampler=self._sampler,
            num_workers=config.num_workers,
            drop_last=config.drop_last,
            generator=self._generator,
            pin_memory=self.device.type == "cuda",
        )
        if len(self.loader) == 0:
            raise ValueError(
                f"the training data ({len(train_data)} samples over {self.context.world_size} process(es)) gives no "
                f"batch of {config.batch_size} with drop_last={config.drop_last}"
            )

    # ------------------------------------------------------------------ properties
    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on this process."""
        return len(self.loader)

    @property
    def checkpoint_path(self) -> Path | None:
        """``<out_dir>/checkpoints/last.pt`` (None without ``out_dir``)."""
        return None if self.out_dir is None else self.out_dir / "checkpoints" / "last.pt"

    def config_dict(self) -> dict[str, Any]:
        """``{"train": ..., "run": ...}`` as stored in checkpoints."""
        return {"train": config_to_dict(self.config), "run": self.run_config}

    # ------------------------------------------------------------------ fit
    def fit(self, resume: str | Path | None = None, *, max_epochs: int | None = None) -> TrainResult:
        """Run the protocol's phases, or continue a run from a checkpoint.

        Args:
            resume: a checkpoint written by this trainer (``checkpoint_path``); training continues
                after its last complete epoch.
            max_epochs: stop after this many epochs in this call (a time-boxed job); resume later.

        Returns:
            :class:`TrainResult`.

        Raises:
            FileNotFoundError: ``resume`` does not exist.
            CheckpointError: ``resume`` is corrupt, made for another network, or
                :class:`~recurnet.training.ConfigMismatchError` for another configuration.
            NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        """
        if self.config.tune_allocator and self.device.type == "cpu":
            tune_allocator()
        state = self._load_resume(resume) if resume is not None else None
        if state is None:
            seed_everything(self.config.seed)
            phase_i, epoch_i, step = 0, 0, 0
        else:
            phase_i, epoch_i, step = int(state["phase"]), int(state["epoch"]), int(state["global_step"])
        last = (phase_i, epoch_i)
        if epoch_i >= self.phases[phase_i].epochs:  # the checkpoint closed a phase: start the next one
            phase_i, epoch_i = phase_i + 1, 0
        logger = MetricLogger(self.out_dir if self.context.is_main else None, tensorboard=self.config.tensorboard)
        if state is not None:
            logger.truncate_after(step)
        history: list[dict[str, float]] = []
        run_epochs = 0
        checkpoint = Path(resume) if state is not None else None
        progress = make_progress(self.config.progress if self.context.is_main else False)
        try:
            with progress:
                for p in range(phase_i, len(self.phases)):
                    phase = self.phases[p]
                    first = epoch_i if p == phase_i else 0
                    if max_epochs is not None and run_epochs >= max_epochs and first < phase.epochs:
                        return TrainResult(last[0], last[1], step, False, history, checkpoint)
                    groups = prepare_phase(self.model, phase, self._base_trainable, self.config.lr, start=first == 0)
                    optimizer = OPTIMIZERS.build(
                        self.config.optimizer, groups, self.config.lr, self.config.weight_decay
                    )
                    scheduler = SCHEDULES.build(self.config.schedule, optimizer, phase.epochs * self.steps_per_epoch)
                    average = self._weight_average(phase)
                    if state is not None and p == phase_i:
                        if first > 0:
                            self._load_optim(state, optimizer, scheduler, resume)
                            self._load_average(state, average, resume)
                        set_rng_state(state["rng"])
                    wrapped = self._wrap()
                    for e in range(first, phase.epochs):
                        if max_epochs is not None and run_epochs >= max_epochs:
                            return TrainResult(last[0], last[1], step, False, history, checkpoint)
                        global_epoch = sum(q.epochs for q in self.phases[:p]) + e
                        mean_loss, rate, step = self._epoch(
                            wrapped, phase, e, global_epoch, optimizer, scheduler, step, logger, progress, checkpoint,
                            average,
                        )
                        if average is not None and e + 1 == phase.epochs:
                            average.copy_to()  # the phase ends on its averaged weights
                        info = EpochInfo(p, e + 1, global_epoch + 1, step, phase.loops, mean_loss)
                        metrics = {"train/epoch_loss": mean_loss, "train/samples_per_s": rate}
                        for callback in self.callbacks:
                            metrics.update(callback(self, info) or {})
                        logger.log(metrics, step=step, phase=p, epoch=e + 1)
                        history.append({"phase": p, "epoch": e + 1, **metrics})
                        checkpoint = self._save(p, e + 1, step, global_epoch + 1, optimizer, scheduler, metrics,
                                                average)
                        last = (p, e + 1)
                        run_epochs += 1
                    del wrapped
        finally:
            logger.close()
        return TrainResult(last[0], last[1], step, True, history, checkpoint)

    # ------------------------------------------------------------------ one epoch
    def _epoch(self, wrapped, phase, epoch, global_epoch, optimizer, scheduler, step, logger, progress, checkpoint,
               average=None):
        cfg = self.config
        self.model.train()
        apply_frozen_modes(self.model, phase)
        self._sampler.set_epoch(global_epoch)
        set_epoch(self.train_data, global_epoch)
        self._generator.manual_seed(epoch_seed(cfg.seed, global_epoch))
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
        task = progress.add_task(
            f"phase {phase.index} (loops {phase.loops}) epoch {epoch + 1}/{phase.epochs}",
            total=self.steps_per_epoch,
            loss=float("nan"),
            rate=0.0,
        )
        total_loss, samples, start = 0.0, 0, time.perf_counter()
        wants_feedback = bool(getattr(self.loss, "uses_feedback", False))  # a loss on the feedback signals
        for i, batch in enumerate(self.loader):
            batch = self._to_device(batch)
            images = batch[cfg.input_key]
            with self._autocast():
                output = wrapped(images, exit="all", loops=phase.loops, count_cost=False,
                                 return_feedback=wants_feedback)
            if cfg.precision != "float32":
                output = output.float()
            result = self.loss(output, batch)
            value = float(result.total.detach())
            self._check_finite(value, result, phase, epoch, step, i, checkpoint)
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update()
            step += 1
            total_loss += value
            samples += images.shape[0]
            if step % cfg.log_every == 0:
                scalars = result.scalars() if hasattr(result, "scalars") else {"loss": value}
                values = {f"train/{k}": v for k, v in scalars.items()}
                values.update({f"lr/{g.get('name', j)}": g["lr"] for j, g in enumerate(optimizer.param_groups)})
                logger.log(values, step=step, phase=phase.index, epoch=epoch + 1)
            elapsed = max(time.perf_counter() - start, 1e-9)
            rate = samples * self.context.world_size / elapsed
            progress.update(task, advance=1, loss=total_loss / (i + 1), rate=rate)
        elapsed = max(time.perf_counter() - start, 1e-9)
        return total_loss / self.steps_per_epoch, samples * self.context.world_size / elapsed, step

    def _check_finite(self, value, result, phase, epoch, step, batch_index, checkpoint) -> None:
        ok = math.isfinite(value)
        if self.context.enabled:  # every rank must stop together, or the others hang in all-reduce
            flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item() > 0)
        if ok:
            return
        parts = result.nonfinite() if hasattr(result, "nonfinite") else []
        where = "; ".join(parts) if parts else f"total = {value}"
        if math.isfinite(value):
            where = "on another rank"
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"non-finite loss at step {step + 1} (phase {phase.index}, epoch {epoch + 1}, batch {batch_index}): "
            f"{where}; {kept}"
        )

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.config.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.config.precision))

    def _to_device(self, batch) -> dict[str, Any]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"batches must be dicts with the images under {self.config.input_key!r}; the dataset gave "
                f"{type(batch).__name__} (return a dict from __getitem__)"
            )
        if self.config.input_key not in batch:
            raise KeyError(f"batch has no {self.config.input_key!r} entry; keys: {sorted(batch)}")
        out = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        images = out[self.config.input_key]
        if self.config.channels_last and isinstance(images, torch.Tensor) and images.dim() == 4:
            out[self.config.input_key] = images.contiguous(memory_format=torch.channels_last)
        return out

    def _wrap(self) -> nn.Module:
        module = self.model
        if self.context.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=ids, find_unused_parameters=self.config.find_unused_parameters
            )
        if self.config.compile:  # compiled around DDP, so its bucketed all-reduce splits the graph
            module = torch.compile(module)
        return module

    def _weight_average(self, phase: Phase) -> WeightAverage | None:
        """A fresh weight average over what ``phase`` trains (None without ``config.ema``)."""
        if self.config.ema is None:
            return None
        self.model.train()
        apply_frozen_modes(self.model, phase)
        return WeightAverage(unwrap(self.model), self.config.ema)

    @staticmethod
    def _load_average(state, average, path) -> None:
        if average is None:
            return
        if state.get("ema") is None:
            raise CheckpointError(f"checkpoint {path} holds no weight average, but this run keeps one (ema)")
        try:
            average.load_state_dict(state["ema"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from e

    def _save(self, phase, epoch, step, global_epoch, optimizer, scheduler, metrics, average=None) -> Path | None:
        if self.checkpoint_path is None or not self.context.is_main:
            return self.checkpoint_path
        return save_checkpoint(
            self.checkpoint_path,
            {
                "config": self.config_dict(),
                "phase": phase,
                "epoch": epoch,
                "global_step": step,
                "model": unwrap(self.model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "ema": average.state_dict() if average is not None else None,
                "data": {"seed": self.config.seed, "epoch": global_epoch},
                "metrics": {k: float(v) for k, v in metrics.items()},
            },
        )

    def _load_resume(self, path) -> dict[str, Any]:
        state = load_checkpoint(path)
        check_config(path, state["config"], self.config_dict())
        phase = int(state["phase"])
        if not 0 <= phase < len(self.phases):
            raise CheckpointError(f"checkpoint {path} is at phase {phase}, the protocol has {len(self.phases)}")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path} does not fit this network: {e}") from e
        return state

    @staticmethod
    def _load_optim(state, optimizer, scheduler, path) -> None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit this phase: {e}") from e
