"""Shared fixtures for the recurnet tests: tiny members of every supported backbone family.

Each family is represented by a timm model built narrow and shallow through
its own constructor arguments (so the family's blocks, stems and norms are the
real ones) and run at 64 px. The full-size models are kept for ``-m slow``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import recurnet

#: Image side used by the family tests, in px.
SIZE = 64


@dataclass(frozen=True)
class Family:
    """A timm model to loopify: name, cut stage and constructor arguments."""

    model: str
    stage: int
    kwargs: dict = field(default_factory=dict)

    def create(self):
        import timm

        return timm.create_model(self.model, pretrained=False, **self.kwargs)


#: One fast representative per family (each builds, runs and back-propagates in well under a second).
FAMILIES: dict[str, Family] = {
    "resnet": Family("test_resnet", 2),
    "resnet_d": Family("resnet18d", 2, dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=8)),
    "resnext": Family(
        "resnext50_32x4d",
        2,
        dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16, cardinality=4, base_width=16),
    ),
    "regnet": Family("regnetx_002", 2),
    "efficientnet": Family("test_efficientnet", 2),
    "mobilenetv3": Family("mobilenetv3_small_050", 2),
    "convnext": Family("test_convnext", 1),
    "densenet": Family("densenet121", 2, dict(growth_rate=8, block_config=(1, 2, 2, 2))),
    "ghostnet": Family("ghostnet_050", 2),
    "vit": Family("test_vit", 2, dict(img_size=SIZE)),
}

#: The registered full-size variants; several times slower, run with ``-m slow``.
FULL_FAMILIES: dict[str, Family] = {
    "resnet10t": Family("resnet10t", 2),
    "resnet18d": Family("resnet18d", 2),
    "resnext26ts": Family("resnext26ts", 2),
    "densenet121": Family("densenet121", 2),
}

#: Families whose refiner norms keep running statistics (BatchNorm variants).
BATCHNORM_FAMILIES = ("resnet", "resnet_d", "resnext", "regnet", "efficientnet", "mobilenetv3", "densenet", "ghostnet")

NUM_CLASSES = 5


def build(family: Family | str, *, max_loops: int = 2, seed: int = 0, **kwargs) -> recurnet.LoopedNet:
    """Loopify ``family`` with a 5-way linear head and uncertainty (override any ``loopify`` argument)."""
    if isinstance(family, str):
        family = FAMILIES[family]
    torch.manual_seed(seed)
    kwargs.setdefault("heads", {"logits": lambda c: nn.Linear(c, NUM_CLASSES)})
    kwargs.setdefault("uncertainty", True)
    kwargs.setdefault("check_size", (SIZE, SIZE))
    return recurnet.loopify(family.create(), family.stage, max_loops=max_loops, **kwargs)


def images(batch: int, size: int = SIZE, *, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """``(batch, 3, size, size)`` standard-normal images from a fixed seed."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def family(request) -> str:
    """Every family's fast representative, by name."""
    return request.param


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.slow) for name in FULL_FAMILIES], ids=list(FULL_FAMILIES)
)
def full_family(request) -> Family:
    """The full-size variants (slow)."""
    return FULL_FAMILIES[request.param]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # The tests run on shared 2-core machines; one thread keeps timings stable and predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_net():
    """The :func:`build` helper: ``make_net(family, max_loops=2, **loopify_kwargs)``."""
    return build


@pytest.fixture(scope="session")
def make_images():
    """The :func:`images` helper: ``make_images(batch, size=64, seed=0, dtype=float32)``."""
    return images


@pytest.fixture(scope="session")
def families() -> dict[str, Family]:
    """The fast family table, for tests that pick members by name."""
    return FAMILIES
