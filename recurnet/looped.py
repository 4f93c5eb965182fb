"""``LoopedNet``: a backbone whose last stages run in a loop, and ``loopify`` that builds one.

The data's way through the network::

    F   = extractor(image)                         once per image
    x_0 = F
    h_l = refiner(x_l)        with the norms of iteration l, shared weights
    y_l = heads(pool(h_l));   alpha_l, f_l = uncertainty(pool(h_l))
    exit decided per sample by the policy (inference)
    x_{l+1} = combine(F, feedback(h_l))            e.g. F * sigmoid(decoder(h_l))

Three ways to run it (``exit=``):

- ``"all"``: every sample runs every iteration (training default).
- ``"compact"``: samples leave the batch when their policy says so, the rest
  continue on a smaller batch; results are scattered back in input order
  (inference default). Compute for exited samples is really skipped.
- ``"simulate"``: run everything, then apply the policy afterwards; gives the
  same exits and predictions as ``"compact"`` and serves threshold sweeps.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import timm
import torch
from torch import nn

from .cost import ComponentCost, CostModel, count_macs, count_params
from .feedback import FEEDBACK, Feedback
from .heads import HeadSpec, UncertaintyHead, build_heads, run_heads
from .norms import EntryNorm, IterationIndex, PerIterationNorm, convert_norms
from .output import LoopOutput
from .policies import POLICIES, ExitPolicy, LoopState, check_decision
from .split import SplitBackbone, TokenAdapter, split_backbone

__all__ = ["LoopedNet", "UnrolledLoop", "loopify", "simulate_exits", "NORM_MODES", "EXIT_MODES", "COST_CACHE_SIZE",
           "WARM_UP_BATCHES"]

#: Batch sizes :meth:`LoopedNet.compile_steps` warms its graphs up with.
WARM_UP_BATCHES = (1, 2, 16)
#: Cost models a :class:`LoopedNet` keeps (one per input shape, loop count and policy).
COST_CACHE_SIZE = 16

#: How per-iteration norms are made: every norm of the refiner, its first norm only,
#: an added norm at the refiner entry (the paper's IR9), or none (all norms shared).
NORM_MODES = ("all", "first", "entry", "shared")
#: Forward modes, see the module docstring.
EXIT_MODES = ("all", "compact", "simulate")


class LoopedNet(nn.Module):
    """A split backbone with a looped refiner, feedback, heads, uncertainty and an exit policy.

    Build it with :func:`loopify`. Attributes are plain submodules:
    ``extractor``, ``refiner``, ``adapter``, ``feedback``, ``heads``,
    ``uncertainty`` (or None) and ``policy`` (a module, a callable, or None
    for "always run to the last iteration"; assign a new one at any time).

    Args:
        parts: the cut backbone.
        max_loops: ``L``; iterations ``0..L`` exist.
        feedback: a :class:`recurnet.feedback.Feedback` module.
        heads: named heads on the pooled refiner output.
        uncertainty: an :class:`recurnet.heads.UncertaintyHead` or None.
        policy: the exit policy.
        norms: one of :data:`NORM_MODES`.
    """

    def __init__(
        self,
        parts: SplitBackbone,
        max_loops: int,
        feedback: Feedback,
        heads: nn.ModuleDict,
        uncertainty: UncertaintyHead | None = None,
        policy: ExitPolicy | None = None,
        norms: str = "all",
        auxiliary: nn.ModuleDict | None = None,
    ):
        super().__init__()
        if norms not in NORM_MODES:
            raise ValueError(f"norms must be one of {NORM_MODES}, got {norms!r}")
        if int(max_loops) != max_loops or max_loops < 0:
            raise ValueError(f"max_loops must be a non-negative integer, got {max_loops}")
        self._index = IterationIndex()
        self.max_loops = int(max_loops)
        self.norm_mode = norms
        self.stage = parts.stage
        self.scale = parts.scale
        refiner = parts.refiner
        if norms == "entry":
            # Tokens and channels-last maps carry channels on the last axis: a LayerNorm there.
            tokens = isinstance(parts.adapter, TokenAdapter) or getattr(parts.adapter, "channels_last", False)
            entry = PerIterationNorm(EntryNorm(parts.stage.channels, tokens), self.max_loops + 1, self._index)
            refiner = nn.Sequential(entry, refiner)
        elif norms in ("all", "first"):
            converted = convert_norms(refiner, self.max_loops + 1, self._index, only_first=norms == "first")
            if not converted:
                raise ValueError("the refiner has no norm layers to make per-iteration; use norms='entry' or 'shared'")
        self.extractor = parts.extractor
        self.refiner = refiner
        self.adapter = parts.adapter
        self.feedback = feedback
        self.heads = heads
        self.uncertainty = uncertainty
        self.policy = policy
        self.auxiliary = auxiliary if auxiliary is not None else nn.ModuleDict()
        # loopify sets both from the timm model; a network built from parts reads them off its extractor.
        first = next((m for m in self.extractor.modules() if isinstance(m, nn.Conv2d)), None)
        self._in_chans = first.in_channels if first is not None else 3
        self.min_input_size = 1
        self._cost_cache: OrderedDict[tuple, CostModel] = OrderedDict()

    # ------------------------------------------------------------------ policy handling
    @property
    def policy(self) -> ExitPolicy | None:
        """The exit policy used by ``exit="compact"`` and ``"simulate"``."""
        return self._modules.get("policy", self.__dict__.get("_plain_policy"))

    @policy.setter
    def policy(self, value: ExitPolicy | str | None) -> None:
        if isinstance(value, str):
            raise TypeError(f"assign a policy object, e.g. recurnet.build_policy({value!r}, ...)")
        if value is not None and not callable(value):
            raise TypeError(f"policy must be callable as policy(state), got {type(value).__name__}")
        self._modules.pop("policy", None)
        self.__dict__.pop("_plain_policy", None)
        if isinstance(value, nn.Module):
            self._modules["policy"] = value
        else:
            self.__dict__["_plain_policy"] = value
        self.__dict__.get("_cost_cache", {}).clear()

    def __setattr__(self, name, value):
        if name == "policy":  # route through the property, not nn.Module's submodule registration
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ structure
    @property
    def per_iteration_norms(self) -> list[PerIterationNorm]:
        """The per-iteration norm containers of the refiner."""
        return [m for m in self.refiner.modules() if isinstance(m, PerIterationNorm)]

    def grow(self) -> None:
        """Add one iteration (``max_loops += 1``); its norms start as copies of the last iteration's."""
        for norm in self.per_iteration_norms:
            norm.grow()
        self.max_loops += 1
        self._cost_cache.clear()
        self.eager_steps()  # compiled steps know only the old iterations

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must be a (B, C, H, W) image tensor, got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"input has {x.shape[1]} channels, the backbone expects {self.in_chans}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"input of {tuple(x.shape[-2:])} px is too small: the backbone downsamples by "
                f"{self.min_input_size}, so each side needs at least {self.min_input_size} px"
            )

    # ------------------------------------------------------------------ compiled steps
    def compile_steps(self, input_shape: Sequence[int] | None = None, **compile_kwargs) -> LoopedNet:
        """Compile the network's steps one by one, for inference with dynamic exits.

        ``torch.compile`` of the whole forward suits ``exit="all"`` (one graph). With a
        policy and ``exit="compact"``, the batch shrinks between iterations by a data-dependent
        amount, so this compiles the pieces between two decisions instead: the extractor with
        iteration 0, and for every later iteration the feedback step with that iteration (refiner,
        pooling, heads, uncertainty; a function per iteration, since each has its own norms),
        each with a dynamic batch dimension. The policy, the compaction and the bookkeeping stay
        eager. Each step has a few graphs: one for a batch
        of 1 (which dynamo specialises) and one per range of larger batches that PyTorch's
        convolution picks one kernel for (on CPUs: 2..15 and 16 or more). ``input_shape``
        compiles them all now, at the batch sizes :data:`WARM_UP_BATCHES` and under
        :func:`torch.inference_mode` (dynamo compiles anew for another grad mode), so later
        inference-mode calls at any batch size compile nothing (``benchmarks/bench_latency.py``
        counts the graphs over batch sizes 1..256).

        By default dynamo's automatic dynamic shapes decide what is dynamic: the warm-up's second
        batch size makes the batch dimension dynamic and leaves channels and image size static,
        which compiles faster and runs faster than ``dynamic=True`` (every dimension symbolic;
        ``benchmarks/results/latency.md`` times both). Images of another size compile once more.

        Args:
            input_shape: ``(C, H, W)`` of the images to warm up with (None: compile on first use).
            **compile_kwargs: passed to :func:`torch.compile` (``dynamic`` defaults to None,
                dynamo's automatic dynamic shapes).

        Returns:
            The network itself. Training-mode calls stay eager. The compiled steps are not part
            of its state: copies and pickles run eagerly; :meth:`eager_steps` undoes the call.

        Examples:
            >>> net = loopify("test_resnet", stage=2, max_loops=1, check_size=(32, 32)).eval()
            >>> net = net.compile_steps(backend="eager")
            >>> net(torch.rand(3, 3, 32, 32)).exit_step.tolist()
            [1, 1, 1]
        """
        compile_kwargs.setdefault("dynamic", None)
        # Dynamo keeps its graphs per code object, up to a recompile limit (8 by default), and a
        # code object is shared by every network and iteration: give each step its own copy.
        steps = {"start": self._start, **{("advance", l): self._advance for l in range(1, self.max_loops + 1)}}
        self.__dict__["_steps"] = {key: torch.compile(_own_code(fn, key), **compile_kwargs)
                                   for key, fn in steps.items()}
        if input_shape is not None:
            self._warm_up(tuple(input_shape))
        return self

    def _warm_up(self, input_shape: tuple[int, ...]) -> None:
        was_training = self.training
        self.eval()
        param = next(self.parameters(), None)
        kwargs = {"device": param.device, "dtype": param.dtype} if param is not None else {}
        # Images come from outside inference mode (a loader, a camera); what the steps make
        # inside it are inference tensors: warm up on the same kinds, or dynamo recompiles.
        images = [torch.zeros(b, *input_shape, **kwargs) for b in WARM_UP_BATCHES]
        try:
            for x in images:
                with torch.inference_mode():
                    self._warm_up_one(x)
        finally:
            self._index.value = None
            self.train(was_training)

    def _warm_up_one(self, x: torch.Tensor) -> None:
        feats, h, *_ = self._first(x)
        for l in range(1, self.max_loops + 1):
            h, *_ = self._next(feats, h, l)

    def eager_steps(self) -> LoopedNet:
        """Drop the steps compiled by :meth:`compile_steps`; returns the network."""
        self.__dict__.pop("_steps", None)
        return self

    def __getstate__(self):
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_steps", None)  # compiled code is no state: copies and pickles run eagerly
        return state

    def _step(self, name, default):
        steps = self.__dict__.get("_steps")
        # Training-mode calls stay eager: the compiled graphs were traced for inference.
        return default if steps is None or self.training else steps[name]

    # ------------------------------------------------------------------ forward
    # The steps between exit decisions: the extractor with iteration 0, then for every later
    # iteration the feedback with the iteration. Compiled, each is one graph (compile_steps).
    def _first(self, x: torch.Tensor):
        """``(feats, h, predictions, log_variance, features)`` of the extractor and iteration 0."""
        self._index.value = 0
        return self._step("start", self._start)(x)

    def _next(self, feats: torch.Tensor, h: torch.Tensor, iteration: int):
        """``(h, predictions, log_variance, features, signal)`` of iteration ``iteration`` (>= 1)."""
        self._index.value = iteration
        return self._step(("advance", iteration), self._advance)(feats, h)

    def _start(self, x: torch.Tensor):
        feats = self.extractor(x)
        return (feats, *self._iteration_body(feats))

    def _advance(self, feats: torch.Tensor, h: torch.Tensor):
        x_in, signal = self._next_input(feats, h)
        return (*self._iteration_body(x_in), signal)

    def _iteration_body(self, x_in: torch.Tensor):
        h = self.refiner(x_in)
        pooled = self.adapter.pool(h)
        predictions = run_heads(self.heads, pooled)
        if self.uncertainty is None:
            return h, predictions, None, None
        unc = self.uncertainty(pooled)
        return h, predictions, unc.log_variance, unc.features

    def _next_input(self, feats: torch.Tensor, h: torch.Tensor):
        f_map = self.adapter.to_map(feats)
        signal = self.feedback(self.adapter.to_map(h), tuple(f_map.shape[-2:]))
        return self.adapter.from_map(feats, self.feedback.combine(f_map, signal)), signal

    def forward(
        self,
        x: torch.Tensor,
        *,
        exit: str | None = None,
        loops: int | None = None,
        generator: torch.Generator | None = None,
        return_feedback: bool = False,
        count_cost: bool = True,
        return_auxiliary: bool | None = None,
    ) -> LoopOutput:
        """Run the looped network.

        Args:
            x: ``(B, C, H, W)`` images.
            exit: ``"all"``, ``"compact"`` or ``"simulate"``; default ``"all"`` in training
                mode and ``"compact"`` in eval mode.
            loops: run iterations ``0..loops`` only (``<= max_loops``); default ``max_loops``.
            generator: random generator handed to stochastic policies.
            return_feedback: keep each iteration's feedback signal (attention maps) in the output.
            count_cost: attach per-sample multiply-adds (``out.macs``).
            return_auxiliary: run the auxiliary heads on the extractor features
                (``out.auxiliary``); default: in training mode only. Their cost is not part
                of ``out.macs``: they serve training and are dropped at inference.

        Returns:
            :class:`recurnet.LoopOutput`.
        """
        mode = exit or ("all" if self.training else "compact")
        if mode not in EXIT_MODES:
            raise ValueError(f"exit must be one of {EXIT_MODES}, got {mode!r}")
        if mode == "compact" and self.training:
            # Train-mode norms would normalise over whichever samples remain, and update their
            # running statistics on shrunken batches: compaction is exact only in eval mode.
            raise ValueError("exit='compact' needs eval mode (call net.eval()): in training mode the norms would "
                             "see only the samples still running; use exit='all' or exit='simulate' to train")
        last = self.max_loops if loops is None else int(loops)
        if not 0 <= last <= self.max_loops:
            raise ValueError(f"loops must be in 0..{self.max_loops}, got {loops}")
        self._check_input(x)
        cost = self.cost_model(tuple(x.shape[1:]), loops=last) if count_cost or self._needs_cost() else None
        try:
            first = self._first(x)
            feats = first[0]
            auxiliary = {}
            # Auxiliary heads follow their own mode: a protocol that freezes them (eval mode) skips them.
            if len(self.auxiliary) and (self.auxiliary.training if return_auxiliary is None else return_auxiliary):
                f_map = self.adapter.to_map(feats)
                auxiliary = {name: head(f_map) for name, head in self.auxiliary.items()}
            if mode == "compact" and self.policy is not None and last > 0:
                out = self._run_compact(first, last, cost, generator, return_feedback)
            else:
                out = self._run_all(first, last, return_feedback)
                if mode != "all" and self.policy is not None:
                    exit_step = simulate_exits(out, self.policy, cost=cost, generator=generator)
                    out = _apply_exits(out, exit_step)
        finally:
            self._index.value = None
        out.auxiliary = auxiliary
        if count_cost:
            out.macs = cost.macs_per_sample(out.exit_step)
        return out

    def _needs_cost(self) -> bool:
        return bool(getattr(self.policy, "needs_cost", False))

    def _run_all(self, first, last: int, return_feedback: bool) -> LoopOutput:
        feats, h, predictions, log_variance, feature = first
        iterations, log_vars, features, signals = [predictions], [log_variance or {}], [feature], [None]
        for l in range(1, last + 1):
            h, predictions, log_variance, feature, signal = self._next(feats, h, l)
            iterations.append(predictions)
            log_vars.append(log_variance or {})
            features.append(feature)
            signals.append(signal if return_feedback else None)
        b = feats.shape[0]
        exit_step = torch.full((b,), last, dtype=torch.long, device=feats.device)
        ran = torch.ones(last + 1, b, dtype=torch.bool, device=feats.device)
        return LoopOutput(iterations, log_vars, features, exit_step, ran, feedback=signals if return_feedback else [])

    def _run_compact(self, first, last, cost, generator, return_feedback) -> LoopOutput:
        feats, h, predictions, lv, feat = first
        b = feats.shape[0]
        device = feats.device
        active = torch.arange(b, device=device)
        exit_step = torch.full((b,), last, dtype=torch.long, device=device)
        ran = torch.zeros(last + 1, b, dtype=torch.bool, device=device)
        iterations, log_vars, features, signals = [], [], [], [None]
        f_act = feats
        for l in range(last + 1):
            if l > 0:
                h, predictions, lv, feat, signal = self._next(f_act, h, l)
                if return_feedback:
                    full = signal.new_zeros((b, *signal.shape[1:]))
                    signals.append(full.index_copy(0, active, signal))
            lv = lv or {}
            if active.numel() == b:
                ran[l] = True
            else:
                ran[l, active] = True
            iterations.append(_scatter(iterations[-1] if iterations else None, predictions, active, b))
            log_vars.append(_scatter(log_vars[-1] if log_vars else None, lv, active, b))
            features.append(None if feat is None else _scatter_one(features[-1] if features else None, feat, active, b))
            if l == last:
                break
            state = LoopState(l, last, predictions, lv, feat, active, b, cost, generator)
            leave = check_decision(self.policy(state), state, self.policy)
            if leave.any():
                exit_step[active[leave]] = l
                stay = ~leave
                active, h, f_act = active[stay], h[stay], f_act[stay]
            if active.numel() == 0:
                break
        while len(iterations) < last + 1:  # everyone left early: later iterations repeat the exits
            iterations.append(iterations[-1])
            log_vars.append(log_vars[-1])
            features.append(features[-1])
            signals.append(None)  # no sample ran this iteration, so no feedback fed it
        return LoopOutput(iterations, log_vars, features, exit_step, ran, feedback=signals if return_feedback else [])

    # ------------------------------------------------------------------ cost
    @property
    def in_chans(self) -> int:
        """Image channels the backbone expects."""
        return self._in_chans

    def cost_model(self, input_shape: Sequence[int], loops: int | None = None) -> CostModel:
        """Count parameters and multiply-adds per component for ``(C, H, W)`` inputs.

        Counting runs a copy of the network in eval mode on one zero image, so the
        network's own statistics are never touched; results are cached per input
        shape, loop count and policy (the :data:`COST_CACHE_SIZE` most recently used).

        Raises:
            Exception: whatever the policy raises on a dummy one-sample state (its cost
                cannot be counted; it is never recorded as 0).
        """
        last = self.max_loops if loops is None else loops
        key = (tuple(input_shape), last, id(self.policy))
        cache = self._cost_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        model = self._count(tuple(input_shape), last)
        cache[key] = model
        while len(cache) > COST_CACHE_SIZE:  # the least recently used counts go first
            cache.popitem(last=False)
        return model

    @torch.compiler.disable
    def _count(self, input_shape: tuple[int, ...], last: int) -> CostModel:
        # A frozen copy: counting never touches the network, and modules fed a parameter directly (an
        # attention-pool latent) do not trip the flop counter's gradient hooks.
        meta = copy.deepcopy(self).eval().requires_grad_(False)
        meta.__dict__["_cost_cache"] = OrderedDict()
        param = next(self.parameters(), None)
        x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu",
                        dtype=param.dtype if param is not None else torch.float32)
        with torch.no_grad():
            ext_macs, feats = count_macs(meta.extractor, x)
            meta._index.value = 0
            ref_macs, h = count_macs(lambda t: meta.adapter.pool(meta.refiner(t)), feats)
            head_macs, preds = count_macs(run_heads, meta.heads, h)
            unc_macs, unc = (0, None) if meta.uncertainty is None else count_macs(meta.uncertainty, h)
            fb_macs, _ = count_macs(meta._next_input, feats, meta.refiner(feats))
            meta._index.value = None
        refiner_params = count_params(self.refiner)
        policy_params = count_params(self.policy) if isinstance(self.policy, nn.Module) else 0
        model = CostModel(
            input_shape=input_shape,
            max_loops=last,
            extractor=ComponentCost(count_params(self.extractor), ext_macs),
            refiner=ComponentCost(refiner_params + count_params(self.adapter), ref_macs),
            feedback=ComponentCost(count_params(self.feedback), fb_macs),
            heads=ComponentCost(count_params(self.heads), head_macs),
            uncertainty=ComponentCost(count_params(self.uncertainty), unc_macs),
            policy=ComponentCost(policy_params, 0),
        )
        # A policy that reads the cost model sees the model without its own (tiny) share.
        return dataclasses.replace(model, policy=ComponentCost(policy_params, self._count_policy(preds, unc, model)))

    def _count_policy(self, preds, unc, cost: CostModel) -> int:
        """Multiply-adds of one decision for one sample, counted on a dummy loop state."""
        if self.policy is None:
            return 0
        device = next(self.parameters()).device
        state = LoopState(
            0,
            1,
            {k: torch.zeros(v.shape, device=device) for k, v in preds.items()},
            {} if unc is None else {k: torch.zeros(v.shape, device=device) for k, v in unc.log_variance.items()},
            None if unc is None else torch.zeros(unc.features.shape, device=device),
            torch.zeros(1, dtype=torch.long, device=device),
            1,
            cost,
            torch.Generator().manual_seed(0),
        )
        try:
            with torch.no_grad():
                macs, _ = count_macs(self.policy, state)
        except Exception as err:  # never a silent 0: the policy's own error, with where it happened
            if hasattr(err, "add_note"):  # Python >= 3.11
                err.add_note(f"(raised while counting the cost of exit policy {type(self.policy).__name__} on a "
                             "dummy one-sample LoopState; a policy must accept any LoopState, or call the network "
                             "with count_cost=False)")
            raise
        return macs


def _scatter_one(previous: torch.Tensor | None, value: torch.Tensor, active: torch.Tensor, b: int) -> torch.Tensor:
    if previous is None or active.numel() == b:  # the whole batch ran (iteration 0, or nobody has left)
        return value
    return previous.index_copy(0, active, value)


class UnrolledLoop(nn.Module):
    """A :class:`LoopedNet` for a fixed number of loops, with its own modules for every iteration.

    The looped network calls one refiner, one set of heads and one feedback decoder at every
    iteration. Tools that work per module call (PyTorch 2 export quantisation groups the
    nodes of a graph by the module that made them, and refuses a convolution called more
    than once) need each iteration's modules apart: here iteration ``l`` owns a copy of the
    refiner with plain norms (the per-iteration norms' ``l``-th), of the heads, of the
    uncertainty head and of the feedback decoder. The forward pass computes what
    ``net(x, exit="all", loops=loops)`` computes; the weights are copies, so later changes
    to ``net`` do not reach it.

    Args:
        net: the looped network (it is not changed).
        loops: iterations ``0..loops`` (default: ``net.max_loops``).

    Examples:
        >>> net = loopify("test_resnet", stage=2, max_loops=2, check_size=(32, 32),
        ...               heads={"y": lambda c: nn.Linear(c, 1)}).eval()
        >>> flat = UnrolledLoop(net).eval()
        >>> x = torch.rand(2, 3, 32, 32)
        >>> torch.allclose(flat(x).final["y"], net(x, exit="all").final["y"], atol=1e-5)
        True
    """

    def __init__(self, net: LoopedNet, loops: int | None = None):
        super().__init__()
        last = net.max_loops if loops is None else int(loops)
        if not 0 <= last <= net.max_loops:
            raise ValueError(f"loops must be in 0..{net.max_loops}, got {loops}")
        self.extractor = copy.deepcopy(net.extractor)
        self.adapter = copy.deepcopy(net.adapter)
        self.steps = nn.ModuleList()
        for l in range(last + 1):
            step = nn.Module()
            step.refiner = _plain_norms(copy.deepcopy(net.refiner), l)
            step.heads = copy.deepcopy(net.heads)
            step.uncertainty = copy.deepcopy(net.uncertainty)
            step.feedback = copy.deepcopy(net.feedback) if l < last else None
            self.steps.append(step)

    def forward(self, x: torch.Tensor) -> LoopOutput:
        """``(B, C, H, W)`` images -> :class:`LoopOutput` with every iteration (no exits, no cost)."""
        feats = self.extractor(x)
        f_map = self.adapter.to_map(feats)
        iterations, log_vars, features = [], [], []
        x_in = feats
        for step in self.steps:
            h = step.refiner(x_in)
            pooled = self.adapter.pool(h)
            iterations.append(run_heads(step.heads, pooled))
            unc = step.uncertainty(pooled) if step.uncertainty is not None else None
            log_vars.append(unc.log_variance if unc is not None else {})
            features.append(unc.features if unc is not None else None)
            if step.feedback is not None:
                signal = step.feedback(self.adapter.to_map(h), tuple(f_map.shape[-2:]))
                x_in = self.adapter.from_map(feats, step.feedback.combine(f_map, signal))
        b, n = feats.shape[0], len(self.steps)
        exit_step = torch.full((b,), n - 1, dtype=torch.long, device=feats.device)
        ran = torch.ones(n, b, dtype=torch.bool, device=feats.device)
        return LoopOutput(iterations, log_vars, features, exit_step, ran)


def _plain_norms(module: nn.Module, iteration: int) -> nn.Module:
    """``module`` with every :class:`PerIterationNorm` replaced by its norm for ``iteration``."""
    if isinstance(module, PerIterationNorm):
        return module.norms[iteration]
    for name, child in list(module.named_children()):
        setattr(module, name, _plain_norms(child, iteration))
    return module


def _own_code(method, key) -> Callable:
    """``method`` (bound) as a function with a code object of its own (see ``compile_steps``)."""
    func = method.__func__
    name = "_".join(map(str, key)) if isinstance(key, tuple) else str(key)
    code = func.__code__.replace(co_name=f"{func.__name__}_{name}")
    own = types.FunctionType(code, func.__globals__, code.co_name, func.__defaults__, func.__closure__)
    return types.MethodType(own, method.__self__)


def _scatter(previous, values: Mapping[str, torch.Tensor], active, b) -> dict[str, torch.Tensor]:
    return {k: _scatter_one(None if previous is None else previous[k], v, active, b) for k, v in values.items()}


def simulate_exits(
    output: LoopOutput,
    policy: ExitPolicy,
    *,
    cost: CostModel | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exit steps a policy would choose, computed from an ``exit="all"`` output.

    One full pass serves any number of thresholds or temperatures: run the
    network once with ``exit="all"``, then call this for each policy setting.

    Args:
        output: a :class:`LoopOutput` in which every sample ran every iteration.
        policy: the policy to apply.
        cost: the cost model handed to cost-aware policies.
        generator: random generator for stochastic policies.

    Returns:
        ``(B,)`` int64 exit steps.
    """
    if not bool(output.ran.all()):
        raise ValueError("simulate_exits needs an output where every sample ran every iteration (exit='all')")
    last = output.num_iterations - 1
    b = output.exit_step.shape[0]
    device = output.exit_step.device
    index = torch.arange(b, device=device)
    exit_step = torch.full((b,), last, dtype=torch.long, device=device)
    running = torch.ones(b, dtype=torch.bool, device=device)
    for l in range(last):
        state = LoopState(
            l, last, output.iterations[l], output.log_variance[l], output.features[l], index, b, cost, generator
        )
        leave = check_decision(policy(state), state, policy) & running
        exit_step[leave] = l
        running &= ~leave
    return exit_step


def _apply_exits(output: LoopOutput, exit_step: torch.Tensor) -> LoopOutput:
    """Make an all-iterations output look like a compacted run that exited at ``exit_step``."""
    last = output.num_iterations - 1
    steps = torch.arange(last + 1, device=exit_step.device)[:, None]
    ran = steps <= exit_step[None, :]

    def carry(seq):
        out = [seq[0]]
        for l in range(1, last + 1):
            if seq[l] is None:
                out.append(None)
                continue
            keep = ran[l]
            if isinstance(seq[l], dict):
                out.append({k: _where_rows(keep, v, out[-1][k]) for k, v in seq[l].items()})
            else:
                out.append(_where_rows(keep, seq[l], out[-1]))
        return out

    # An iteration no sample ran has no feedback, as in a compacted run where everyone left before it.
    feedback = [
        None if f is None or not bool(ran[l].any()) else _where_rows(ran[l], f, torch.zeros_like(f))
        for l, f in enumerate(output.feedback)
    ]
    return LoopOutput(
        carry(output.iterations),
        carry(output.log_variance),
        carry(output.features),
        exit_step,
        ran,
        feedback=feedback,
    )


def _where_rows(keep: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(keep.view(-1, *([1] * (new.dim() - 1))), new, old)


def _output_shapes(heads: nn.ModuleDict, channels: int) -> dict[str, tuple[int, ...]]:
    was = {name: h.training for name, h in heads.items()}
    heads.eval()
    try:
        device = next((p.device for p in heads.parameters()), torch.device("cpu"))
        with torch.no_grad():
            probe = run_heads(heads, torch.zeros(2, channels, device=device))
    finally:
        for name, h in heads.items():
            h.train(was[name])
    return {k: tuple(v.shape[1:]) for k, v in probe.items()}


def loopify(
    backbone: str | nn.Module,
    stage: int,
    *,
    max_loops: int = 3,
    feedback: str | Feedback = "attention",
    heads: Mapping[str, HeadSpec] | None = None,
    uncertainty: bool | Sequence[str] | Mapping[str, tuple[int, ...]] = False,
    uncertainty_hidden: int = 128,
    auxiliary: Mapping[str, HeadSpec] | None = None,
    log_var_bound: float | None = 10.0,
    log_var_init: float = 0.0,
    norms: str = "all",
    policy: ExitPolicy | None = None,
    check_size: tuple[int, int] | None = None,
    **model_kwargs,
) -> LoopedNet:
    """Turn a timm backbone into a looped network.

    Args:
        backbone: a timm model name (built with ``pretrained=False`` unless given in
            ``model_kwargs``) or an already built timm model.
        stage: cut after ``feature_info[stage]``; stages after it form the refiner.
        max_loops: ``L``; the refiner runs at most ``L + 1`` times.
        feedback: a name from :data:`recurnet.feedback.FEEDBACK` (``"attention"``,
            ``"features"``, ``"none"``) or a built :class:`Feedback`.
        heads: output name -> head module or factory ``f(channels) -> nn.Module``
            applied to the pooled refiner output ``(B, C)``. Default: none (the pooled
            features are returned as ``"features"``).
        uncertainty: False; True for log-variances of every output with its own shape;
            a list of output names; or a mapping name -> per-sample log-variance shape.
        uncertainty_hidden: width of the uncertainty features ``f``.
        auxiliary: training-only heads on the extractor's feature map ``(B, C, h, w)``: name ->
            module or factory ``f(extractor_channels)``. They run in training mode (their outputs in
            ``LoopOutput.auxiliary``, for auxiliary losses such as dense 2D heatmaps) and not at
            inference, so they cost nothing there.
        log_var_bound: soft bound on the predicted log-variances (see
            :class:`recurnet.heads.UncertaintyHead`); None: unbounded.
        log_var_init: the log-variance the uncertainty head starts at.
        norms: one of :data:`NORM_MODES`; ``"all"`` makes every refiner norm per-iteration.
        policy: exit policy for inference (default None: run every iteration).
        check_size: ``(H, W)`` of the split self-check input (default: the model's input size).
        **model_kwargs: passed to ``timm.create_model`` when ``backbone`` is a name.

    Returns:
        The :class:`LoopedNet`.

    Examples:
        >>> net = loopify("test_resnet", stage=2, max_loops=2, check_size=(64, 64),
        ...               heads={"logits": lambda c: nn.Linear(c, 10)}, uncertainty=True)
        >>> out = net(torch.randn(2, 3, 64, 64))
        >>> out.iterations[-1]["logits"].shape, out.log_variance[-1]["logits"].shape
        (torch.Size([2, 10]), torch.Size([2, 10]))
    """
    if isinstance(backbone, str):
        model_kwargs.setdefault("pretrained", False)
        model = timm.create_model(backbone, **model_kwargs)
    elif isinstance(backbone, nn.Module):
        if model_kwargs:
            raise TypeError(f"model keyword arguments {sorted(model_kwargs)} need a model name, not a built model")
        model = backbone
    else:
        raise TypeError(f"backbone must be a timm model name or nn.Module, got {type(backbone).__name__}")
    parts = split_backbone(model, stage, check_size=check_size)
    if isinstance(feedback, str):
        feedback = FEEDBACK.build(feedback, parts.refiner_channels, parts.stage.channels, parts.scale)
    elif not isinstance(feedback, Feedback):
        raise TypeError(f"feedback must be a registered name or a Feedback module, got {type(feedback).__name__}")
    head_modules = build_heads(heads if heads else {"features": nn.Identity()}, parts.refiner_channels)
    unc_head = None
    if uncertainty is not False and uncertainty is not None:
        shapes = _output_shapes(head_modules, parts.refiner_channels)
        if uncertainty is True:
            chosen = shapes
        elif isinstance(uncertainty, Mapping):
            chosen = dict(uncertainty)
        else:
            chosen = {name: shapes.get(name) for name in uncertainty}
        unknown = [n for n, s in chosen.items() if n not in shapes]
        if unknown:
            raise ValueError(f"uncertainty asked for outputs {unknown}, but the heads produce {sorted(shapes)}")
        unc_head = UncertaintyHead(parts.refiner_channels, chosen, hidden=uncertainty_hidden, bound=log_var_bound,
                                   init=log_var_init)
    aux_modules = build_heads(auxiliary, parts.stage.channels) if auxiliary else None
    net = LoopedNet(parts, max_loops, feedback, head_modules, unc_head, policy, norms, aux_modules)
    net._in_chans = int(getattr(model, "in_chans", 3) or 3)
    info = model.feature_info
    entries = list(info) if isinstance(info, list) else [info.info[i] for i in range(len(info.info))]
    net.min_input_size = max(int(e["reduction"]) for e in entries)
    return net
