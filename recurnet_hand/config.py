"""Run configuration: frozen dataclasses, read from YAML only here.

A run is described by one :class:`RunConfig`: the model (:class:`DIRNetConfig`),
the data, the loss weights, the training schedule and the gate. It is written
as ``config.yaml`` next to every run's outputs and stored in its checkpoints.
YAML files may give any subset of the fields; unknown keys are errors that name
the key and the file.

Example ``run.yaml``::

    model: {preset: fpha, max_loops: 3}
    data: {dataset: fpha, root: /data/FPHA}
    train: {protocol: progressive, epochs: 50, loop_epochs: 20, batch_size: 64}
    gate: {enabled: true, temperatures: [0.5, 1, 2]}
"""

from __future__ import annotations

import math
import os
import tempfile
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from recurnet.training import EndToEnd, Progressive
from recurnet.training.config import PRECISIONS

from .losses import LossConfig
from .model import PRESETS, DIRNetConfig, preset

__all__ = [
    "DataConfig",
    "ScheduleConfig",
    "GateSettings",
    "RunConfig",
    "ConfigError",
    "load_config",
    "save_config",
    "config_from_dict",
    "config_to_dict",
    "with_overrides",
]

PROTOCOL_NAMES = ("progressive", "end-to-end")


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key (and file)."""


@dataclass(frozen=True)
class DataConfig:
    """Which data a run trains and evaluates on.

    Attributes:
        dataset: ``synthetic`` (default; rendered offline), ``stb`` or ``fpha``.
        root: data root of a real dataset; for ``synthetic``, the cache folder (None: the shared cache,
            :func:`recurnet_hand.train.default_cache_dir`).
        mix: a 2D-only dataset mixed into training (``panoptic``, as the paper does for STB).
        mix_root: its data root.
        train_samples: synthetic training images. 18000 images with 13 epochs train about as
            many steps as 6000 images with 40 epochs, and score better: more distinct images
            beat more passes over fewer (``benchmarks/results/full_ablation.md``). The default
            trains them for 16 epochs.
        test_samples: synthetic test images.
        viewpoint: synthetic hands' viewpoint distribution: ``stb`` (third-person, the
            default), ``fpha`` (first-person) or ``any`` (every orientation).
        augment: augment the training data (rotation, zoom, shift, colour; drawn anew every epoch).
        rotation_deg: largest in-plane rotation of the augmentation (degrees); None (the
            default): the dataset's own, 15 for synthetic hands
            (:data:`recurnet_hand.data.factory.SYNTHETIC_AUGMENT`) and 30 for real data
            (:data:`recurnet_hand.data.factory.TRAIN_AUGMENT`).
        workers: processes that render the synthetic cache.
        loader_workers: DataLoader worker processes that load and augment training batches
            while the main process trains (0: load in the main process).
    """

    dataset: str = "synthetic"
    root: str | None = None
    mix: str | None = None
    mix_root: str | None = None
    train_samples: int = 18000
    test_samples: int = 500
    viewpoint: str = "stb"
    augment: bool = True
    rotation_deg: float | None = None
    workers: int = 2
    loader_workers: int = 0

    def __post_init__(self) -> None:
        from .data.synthetic import VIEWPOINTS

        if self.viewpoint not in VIEWPOINTS:
            raise ConfigError(f"data.viewpoint must be one of {sorted(VIEWPOINTS)}, got {self.viewpoint!r}")
        if self.rotation_deg is not None and not (math.isfinite(self.rotation_deg) and 0 <= self.rotation_deg <= 180):
            raise ConfigError(f"data.rotation_deg must be in [0, 180] degrees, got {self.rotation_deg}")
        for name in ("workers", "loader_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"data.{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class ScheduleConfig:
    """How the network is trained (paper section 6: ``epochs=50, loop_epochs=20, lr=1e-3``).

    Attributes:
        protocol: ``progressive`` (Algorithm 1) or ``end-to-end``.
        epochs: epochs of phase 0 (progressive) ...
        loop_epochs: ... and of every later phase; end-to-end trains the same total.
        batch_size: samples per step and process.
        lr: base learning rate.
        weight_decay: Adam weight decay.
        schedule: ``constant`` or ``cosine`` within each phase.
        grad_clip: gradient-norm clip (None: off).
        lr_decay: progressive only: phase ``p`` trains all but the feedback decoder at
            ``lr * lr_decay ** p``. The paper decays by 1/10 per phase (``0.1``); on synthetic
            hands the later phases then barely move the network, and keeping the rate
            (``1.0``, the default) scores better at the same cost
            (``benchmarks/results/experiments_synthetic.md``).
        ema: decay of the exponential moving average of the weights kept in every phase; each
            phase ends on the average (:class:`recurnet.training.ema.WeightAverage`). None: off.
        channels_last: train in the channels-last memory format (the same numbers to float
            rounding, a faster training step on CPUs: ``benchmarks/results/train_step.md``).
        precision: ``float32``, ``bfloat16`` (a mixed-precision forward, see
            :class:`recurnet.TrainConfig`) or ``auto`` (the default): bfloat16 where the device
            computes it natively (CPUs with AVX-512 bf16 or AMX, CUDA GPUs that support it), else
            float32. On such a CPU the bfloat16 training step of the ``cpu`` preset is faster than
            the float32 one (``benchmarks/results/train_step.md``) and scores the same in the
            recipe ablation; the time it saves pays for the preset's width 32. Where it falls
            back to float32, training takes longer.
        compile: compile the network's training forward with :func:`torch.compile` (see
            :class:`recurnet.TrainConfig`; ``benchmarks/results/train_step_compiled.md`` times it). Off
            by default: on a 2-core CPU the compiled step is barely faster than the eager one,
            and each phase first compiles for over a minute.
    """

    protocol: str = "progressive"
    epochs: int = 16
    loop_epochs: int = 1
    batch_size: int = 32
    lr: float = 6e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    grad_clip: float | None = 5.0
    lr_decay: float = 1.0
    ema: float | None = None
    channels_last: bool = True
    precision: str = "auto"
    compile: bool = False

    def __post_init__(self):
        if self.protocol not in PROTOCOL_NAMES:
            raise ConfigError(f"train.protocol must be one of {PROTOCOL_NAMES}, got {self.protocol!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"train.lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"train.ema must be a decay in (0, 1) or null, got {self.ema}")
        if self.precision not in ("auto",) + PRECISIONS:
            raise ConfigError(f"train.precision must be one of {('auto',) + PRECISIONS}, got {self.precision!r}")

    def build(self, max_loops: int):
        """The :mod:`recurnet.training` protocol object for a network with ``max_loops``."""
        phases = (self.epochs,) + (self.loop_epochs,) * max_loops
        if self.protocol == "progressive":
            return Progressive(phases, lr_decay=self.lr_decay)
        return EndToEnd(sum(phases))


@dataclass(frozen=True)
class GateSettings:
    """Training and sweeping the learned exit gate (paper section 4.2).

    Attributes:
        enabled: train a gate after the network.
        epochs: passes of policy gradient over the stored rollouts.
        loss_scale: ``lambda`` of Eq. 11. With ``normalize_reward`` (the default) a loop is
            worth running when it lowers a sample's loss by more than ``1/loss_scale`` of the
            average loss at iteration 0; without it, the raw loss is weighed against GMACs.
        normalize_reward: loss relative to its mean at iteration 0, cost in loops
            (:class:`recurnet.training.GateConfig`).
        hidden: hidden width of the gate.
        temperatures: ``tau_gate`` values swept at evaluation.
        variance_thresholds: how many ``tau_var`` values to sweep (spread over observed variances).
    """

    enabled: bool = True
    epochs: int = 40
    loss_scale: float = 50.0
    normalize_reward: bool = True
    hidden: int = 64
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    variance_thresholds: int = 6


def _default_model() -> DIRNetConfig:
    return PRESETS["cpu"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run.

    Attributes:
        model: the DIR-Net architecture (YAML: ``preset: name`` plus field overrides).
        data: :class:`DataConfig`.
        loss: :class:`recurnet_hand.losses.LossConfig`.
        train: :class:`ScheduleConfig`.
        gate: :class:`GateSettings`.
        seed: seeds data order, initialisation and the synthetic data.
        device: ``auto``, ``cpu``, ``cuda``, ...
        out_dir: where checkpoints, metrics, tables and plots go.
    """

    model: DIRNetConfig = field(default_factory=_default_model)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)
    gate: GateSettings = field(default_factory=GateSettings)
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/dirnet"

    def __post_init__(self):
        # Checked here, not at the first loop phase's first step, minutes into a run.
        if self.loss.weight_attention > 0 and (self.model.feedback != "attention" or self.model.max_loops < 1):
            raise ConfigError(f"loss.weight_attention supervises attention maps, which need model.feedback: "
                              f"attention and model.max_loops >= 1; got feedback {self.model.feedback!r} and "
                              f"max_loops {self.model.max_loops}")


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), as written to YAML and checkpoints."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(asdict(config))


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value, hint, where: str):
    """Check and convert a YAML value to the annotated type (ints to floats, lists to tuples)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a finite number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _section(cls, data: Any, where: str, base=None):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return replace(base, **values) if base is not None else cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _model(data: Any, where: str, base: DIRNetConfig) -> DIRNetConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    name = data.pop("preset", None)
    if name is not None:
        try:
            base = preset(name)
        except ValueError as err:
            raise ConfigError(f"{where}.preset: {err}") from None
    return _section(DIRNetConfig, data, where, base)


_SECTIONS = {"data": DataConfig, "loss": LossConfig, "train": ScheduleConfig, "gate": GateSettings}


def config_from_dict(data: Any, *, source: str = "config", base: RunConfig | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from nested plain data, on top of ``base`` (default: the defaults).

    Raises:
        ConfigError: naming the first unknown key or badly typed value, prefixed with ``source``.
    """
    base = base or RunConfig()
    if data is None:
        return base
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(RunConfig)})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {[f.name for f in fields(RunConfig)]}")
    values: dict[str, Any] = {}
    if "model" in data:
        values["model"] = _model(data["model"], f"{source}: model", base.model)
    for key, cls in _SECTIONS.items():
        if key in data:
            values[key] = _section(cls, data[key], f"{source}: {key}", getattr(base, key))
    hints = _hints(RunConfig)
    for key in ("seed", "device", "out_dir"):
        if key in data:
            values[key] = _coerce(data[key], hints[key], f"{source}: {key}")
    try:
        return replace(base, **values)
    except ConfigError as err:  # a rule across sections (RunConfig.__post_init__)
        raise ConfigError(f"{source}: {err}") from None


def load_config(path: str | os.PathLike, *, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML run configuration.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: invalid YAML or an invalid key/value (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return config_from_dict(data, source=str(path), base=base)


def save_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(config_to_dict(config), fh, sort_keys=False)
    os.replace(tmp, path)
    return path


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted overrides such as ``{"train.epochs": 5, "model.preset": "fpha"}`` (None values skipped).

    Examples:
        >>> with_overrides(RunConfig(), {"train.epochs": 2, "model.max_loops": 1}).train.epochs
        2
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        head, _, tail = key.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            nested[head] = value
    # A preset switch must come before field overrides of the same section.
    if "model" in nested and "preset" in nested["model"]:
        nested["model"] = {"preset": nested["model"].pop("preset"), **nested["model"]}
    return config_from_dict(nested, source="options", base=config)


