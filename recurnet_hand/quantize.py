"""Int8 inference: DIR-Net quantised by PyTorch 2 export quantisation and compiled by inductor.

:func:`quantize_int8` unrolls the fixed-loop network (:class:`recurnet.UnrolledLoop`: a
copy of the refiner, heads and feedback per iteration, since the quantizer groups a
graph's nodes by the module that made them), exports it with :func:`torch.export.export`
(dynamic batch), annotates it with torchao's ``X86InductorQuantizer`` (static int8:
activations per tensor, weights per channel, convolutions and linear layers), runs the
calibration images through the observers, converts it, and compiles it with inductor and
frozen weights, which lowers the quantised convolutions to oneDNN's int8 kernels (AMX or
VNNI where the CPU has them). CPUs without VNNI sum pairs of uint8 x int8 products in 16
bits, which saturates for full-range activations, so there the activations are quantised
to 7 bits (``reduce_range``, :func:`cpu_has_vnni`). The pose and uncertainty heads stay in float32 by default:
they are a small share of the multiply-adds, and MANO's chains of rotations need the
precision.

Needs ``torchao`` (``pip install "recurnet[quant]"``). Measured in
``benchmarks/results/quant.md`` (``python benchmarks/bench_quant.py``): latency at batch 1
against float32 eager and compiled, and the 3D error of the shipped model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

import recurnet
from recurnet.output import LoopOutput

__all__ = ["quantize_int8", "QuantizedLoop", "cpu_has_vnni"]


class QuantizedLoop(nn.Module):
    """A quantised, compiled fixed-loop network; ``forward(images)`` returns a :class:`recurnet.LoopOutput`.

    Every sample runs every loop (``exit_step`` is the last iteration for all). Calls run
    under :func:`torch.inference_mode`; the first call at a new batch size compiles.

    Attributes:
        loops: the last iteration.
        outputs: names of the head outputs carried (``joints3d``, ``joints2d``, ...).
        variances: names of the outputs with log-variances.
    """

    def __init__(self, graph: nn.Module, outputs: tuple[str, ...], variances: tuple[str, ...], loops: int):
        super().__init__()
        self.graph = graph
        self.outputs, self.variances, self.loops = outputs, variances, loops
        self._compiled = torch.compile(graph, backend="inductor")

    def forward(self, images: torch.Tensor) -> LoopOutput:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        # Freezing is read when a graph compiles (the first call at each batch size).
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            flat = self._compiled(images)
        n = self.loops + 1
        heads, log_vars = flat[: len(self.outputs)], flat[len(self.outputs):]
        iterations = [{k: v[l] for k, v in zip(self.outputs, heads)} for l in range(n)]
        variances = [{k: v[l] for k, v in zip(self.variances, log_vars)} for l in range(n)]
        b = images.shape[0]
        exit_step = torch.full((b,), self.loops, dtype=torch.long)
        return LoopOutput(iterations, variances, [None] * n, exit_step, torch.ones(n, b, dtype=torch.bool))


class _Flat(nn.Module):
    """An :class:`recurnet.UnrolledLoop` with tensor outputs: per name, the iterations stacked."""

    def __init__(self, unrolled: recurnet.UnrolledLoop, outputs, variances):
        super().__init__()
        self.net, self.outputs, self.variances = unrolled, outputs, variances

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(images)
        heads = [torch.stack([it[k] for it in out.iterations]) for k in self.outputs]
        log_vars = [torch.stack([lv[k] for lv in out.log_variance]) for k in self.variances]
        return (*heads, *log_vars)


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI, the int8 dot-product instructions, as PyTorch reports it.

    Without them, x86 int8 kernels multiply uint8 activations by int8 weights in pairs summed
    in 16 bits, which saturates for full-range activations.
    """
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if check is not None else False


def quantize_int8(net: recurnet.LoopedNet, calibration: Iterable[torch.Tensor], *, loops: int | None = None,
                  outputs: tuple[str, ...] = ("joints3d", "joints2d"), quantize_heads: bool = False,
                  reduce_range: bool | None = None) -> QuantizedLoop:
    """``net`` with every loop quantised to int8 (see the module docstring); ``net`` is not changed.

    Args:
        net: a DIR-Net (or any :class:`recurnet.LoopedNet` whose heads return the ``outputs``).
        calibration: image batches ``(B, 3, S, S)`` in ``[0, 1]`` for the observers, e.g. a
            few hundred training images; at least one batch.
        loops: iterations ``0..loops`` (default ``net.max_loops``).
        outputs: head outputs to return.
        quantize_heads: also quantise the heads and the uncertainty head.
        reduce_range: quantise activations to 7 bits (0..127) instead of 8. CPUs without VNNI
            multiply uint8 by int8 through 16-bit sums that saturate at full range, which costs
            accuracy (``benchmarks/results/quant.md``); None (the default): on exactly those
            CPUs (:func:`cpu_has_vnni`).

    Returns:
        A :class:`QuantizedLoop`.

    Raises:
        ImportError: torchao is not installed.
        ValueError: no calibration batch, or a batch of the wrong shape.
    """
    batches = list(calibration)
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch of images")
    for i, images in enumerate(batches):
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1:] != batches[0].shape[1:]:
            raise ValueError(f"calibration batch {i} must be a (B, C, H, W) tensor like batch 0 "
                             f"{tuple(batches[0].shape)}, got {tuple(getattr(images, 'shape', ()))}")
        net._check_input(images)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as err:
        raise ImportError(
            f"quantize_int8 needs torchao ({err}); install it with: pip install 'recurnet[quant]'") from err

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    config = xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    quantizer = xiq.X86InductorQuantizer().set_global(config)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():  # fill lazily built caches (MANO's kinematic levels) before copying
            net(batches[0][:1], exit="all", loops=loops, count_cost=False)
        unrolled = recurnet.UnrolledLoop(net, loops).eval()
    finally:
        net.train(was_training)
    variances = tuple(unrolled.steps[0].uncertainty.shapes) if unrolled.steps[0].uncertainty is not None else ()
    flat = _Flat(unrolled, tuple(outputs), variances).eval()
    example = batches[0][:2] if batches[0].shape[0] >= 2 else torch.cat([batches[0], batches[0]])
    batch = torch.export.Dim("batch", min=1, max=1 << 16)  # traced at 2: export fixes a batch of 1
    program = torch.export.export(flat, (example,), dynamic_shapes=({0: batch},))
    if not quantize_heads:
        for l in range(len(unrolled.steps)):
            for part in ("heads", "uncertainty"):
                quantizer.set_module_name_qconfig(f"net.steps.{l}.{part}", None)
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for images in batches:
            prepared(images)
    return QuantizedLoop(convert_pt2e(prepared), tuple(outputs), variances, len(unrolled.steps) - 1)
