"""Pruning methods: what happens to one targeted module, given its block's inputs.

A method turns a :class:`ModuleJob` into a :class:`MethodResult` (new weight and keep-mask,
both in the ``(rows, inputs)`` view of :mod:`snows_hf.masks.layout`), or, when it says it
prunes blocks (:attr:`Method.prunes_blocks`), the jobs of all of a block's modules into
one result each. It never writes into the model itself: the pipeline does, so every
method gets the same bookkeeping.
Its options are a :class:`MethodConfig` of its own, whose ``name`` it is registered under.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn

from ..blocks import run_block, tracked_hooks
from ..distributed import Processes
from ..fields import SettingError, check_fields, setting
from ..masks import SparsityPattern, to_rows


@dataclass
class ModuleJob:
    """Everything a method may use to prune one module.

    Attributes:
        name: full module name in the model.
        module: the module itself (its weight is still the current, unpruned one).
        layout: weight layout (``linear``, ``conv1d`` or ``conv2d``).
        pattern: the sparsity pattern to meet.
        block_index: index of the enclosing block.
        block: the enclosing block, on the execution device.
        calls: the block's calibration inputs (one :class:`~snows_hf.pipeline.BlockCall` per
            micro-batch), as the partly pruned network produces them.
        blocks: every block of the model (windows may run on into later blocks).
        param_name: the weight's name relative to ``block`` (``"mlp.fc1.weight"``).
        dense_calls: the dense network's own inputs to this block, when the method asked
            for them (``needs_dense_stream``), else ``None``.
        dense_overrides: dense weights of the modules of this block pruned before this
            one (names relative to the block), to run the block as the dense model.
        stats_dtype: dtype in which input statistics are accumulated.
        batch_ids: global micro-batch index of each of ``calls`` (data-parallel runs hold
            a shard; default: ``0 .. len(calls) - 1``).
        num_batches: micro-batches across all processes (default: ``len(calls)``).
        processes: the run's :class:`~snows_hf.distributed.Processes` (sums across them).
        stats: input statistics already collected for this module (by
            :func:`block_input_stats`); :meth:`input_stats` adds what it computes.
    """

    name: str
    module: nn.Module
    layout: str
    pattern: SparsityPattern
    block_index: int
    block: nn.Module
    calls: list
    blocks: Any = None  # the model's BlockList
    param_name: str = "weight"
    dense_calls: list | None = None
    dense_overrides: dict[str, torch.Tensor] = field(default_factory=dict)
    stats_dtype: torch.dtype = torch.float32
    batch_ids: list[int] | None = None
    num_batches: int | None = None
    processes: Processes = field(default_factory=Processes)
    stats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.batch_ids is None:
            self.batch_ids = list(range(len(self.calls)))
        if self.num_batches is None:
            self.num_batches = len(self.calls)
        self._positions = {b: i for i, b in enumerate(self.batch_ids)}

    def local_index(self, batch_id: int) -> int:
        """Position in ``calls`` of global micro-batch ``batch_id`` (this process's)."""
        return self._positions[batch_id]

    def weight_rows(self) -> torch.Tensor:
        """The current weight as a detached ``(rows, inputs)`` matrix."""
        return to_rows(self.module.weight.detach(), self.layout)

    @torch.no_grad()
    def module_inputs(self, indices: Iterable[int], dense: bool = False) -> Iterator[torch.Tensor]:
        """The module's input, as ``(tokens, features)``, for each call in ``indices``.

        ``dense=False``: as the partly pruned network feeds it (``calls``); ``dense=True``:
        as the dense network does (``dense_calls`` with ``dense_overrides``), sample for
        sample in the same order. One block forward per call; the hook is always removed.
        """
        calls, overrides = (self.dense_calls, self.dense_overrides) if dense else (self.calls, None)
        if calls is None:
            raise RuntimeError("the dense stream was not kept for this method")
        for found in modules_inputs(self.block, [(self.name, self.module, self.layout)], calls, indices, overrides):
            yield found[self.name]

    def input_stats(self, needs: Iterable[str]) -> dict[str, torch.Tensor]:
        """Statistics of the module's inputs over all calls, as mask selectors ask for them.

        ``input_sq``: the diagonal of ``X^T X`` (the sum over every token of each squared
        input feature), shape ``(inputs,)``, or ``(positions, inputs)`` for Conv2d;
        ``gram``: the full ``X^T X``. Streamed micro-batch by micro-batch in
        ``stats_dtype`` on the block's device, in one pass for everything asked, summed
        across data-parallel processes, and kept for the job's later calls.
        """
        missing = set(needs) - set(self.stats)
        if not missing:
            return {k: self.stats[k] for k in needs}
        sums = InputStats(self.module, self.layout, missing, self.stats_dtype)
        for x in self.module_inputs(range(len(self.calls))):
            sums.add(x)
        self.stats.update(sums.result(self.processes))
        return {k: self.stats[k] for k in needs}


@torch.no_grad()
def modules_inputs(block: nn.Module, modules: list[tuple[str, nn.Module, str]], calls: list, indices: Iterable[int],
                   overrides: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """For each call in ``indices``, the input of every ``(name, module, layout)`` of
    ``block`` as ``(tokens, features)`` (:func:`input_features`, at least float32), by name:
    one block forward per call, with parameters ``overrides`` (names relative to the
    block) in place of the block's own. A module run twice in one forward gives its first
    input. The hooks are always removed.

    Example:
        >>> from snows_hf.blocks import BlockCall
        >>> block = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> call = BlockCall((torch.ones(4, 2),), {})
        >>> found = next(modules_inputs(block, [("1", block[1], "linear")], [call], [0]))
        >>> found["1"].shape
        torch.Size([4, 3])
    """
    seen: dict[str, torch.Tensor] = {}
    active = [False]  # two of these generators may be open at once on the same modules

    def hook_for(name: str, layout: str):
        def grab(module: nn.Module, args: tuple, output: Any) -> None:
            if active[0] and name not in seen:
                x = input_features(module, layout, args[0])
                seen[name] = x.to(torch.promote_types(x.dtype, torch.float32))

        return grab

    with _hooked(modules, hook_for):
        for i in indices:
            seen.clear()
            active[0] = True
            try:
                run_block(block, calls[i], overrides)
            finally:
                active[0] = False
            yield dict(seen)


class InputStats:
    """Sums over a module's inputs that mask selectors read (see
    :meth:`ModuleJob.input_stats`), added micro-batch by micro-batch.

    Example:
        >>> sums = InputStats(nn.Linear(2, 1), "linear", {"input_sq", "gram"}, torch.float64)
        >>> terms = sums.add(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
        >>> {k: v.tolist() for k, v in sorted(sums.result(Processes()).items())}
        {'gram': [[10.0, 2.0], [2.0, 4.0]], 'input_sq': [10.0, 4.0]}
    """

    KINDS = frozenset({"input_sq", "gram"})

    def __init__(self, module: nn.Module, layout: str, needs: Iterable[str], dtype: torch.dtype) -> None:
        unknown = set(needs) - self.KINDS
        if unknown:
            raise ValueError(f"unknown input statistics {sorted(unknown)}")
        self.module, self.layout, self.dtype = module, layout, dtype
        self.gram_needed = "gram" in set(needs)
        self.sq: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add one micro-batch of inputs, ``(tokens, features)`` as :func:`input_features`
        gives them; returns what it added (``(input_sq, gram)``) for :meth:`add_terms`."""
        x = x.to(self.dtype)
        terms = (x.pow(2).sum(0), x.T @ x if self.gram_needed else None)
        self.add_terms(terms)
        return terms

    def add_terms(self, terms: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        """Add what :meth:`add` of another module's sums computed for the same input tensor
        (modules reading one tensor, such as q/k/v projections, share its Gram matrix)."""
        sq, gram = terms
        self.sq = sq if self.sq is None else self.sq + sq
        if self.gram_needed:
            self.gram = gram if self.gram is None else self.gram + gram

    def result(self, processes: Processes) -> dict[str, torch.Tensor]:
        """The sums over every micro-batch of every process (``input_sq`` always, ``gram`` when asked)."""
        sq = processes.sum(self.sq)
        positions = _kernel_positions(self.module) if self.layout == "conv2d" else 1
        found = {"input_sq": sq.reshape(positions, -1) if positions > 1 else sq}
        if self.gram is not None:
            found["gram"] = processes.sum(self.gram)
        return found


@torch.no_grad()
def block_input_stats(block: nn.Module, modules: list[tuple[str, nn.Module, str]], calls: list, needs: Iterable[str],
                      dtype: torch.dtype, processes: Processes) -> dict[str, dict[str, torch.Tensor]]:
    """The input statistics ``needs`` of every ``(name, module, layout)`` of ``block``, in
    one forward of the block per call, before any of them is pruned: what SparseGPT's
    reference and llm-compressor collect. Each module's figures equal what
    :meth:`ModuleJob.input_stats` finds for it while the modules before it are still dense.
    The hooks are always removed.

    Example:
        >>> block = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))  # doctest: +SKIP
        >>> block_input_stats(block, [("0", block[0], "linear")], calls, {"input_sq"}, torch.float32, Processes())  # doctest: +SKIP
        {'0': {'input_sq': tensor([...])}}
    """
    needs = set(needs)
    sums = {name: InputStats(module, layout, needs, dtype) for name, module, layout in modules}
    seen: set[str] = set()  # a module run twice in one forward counts its first input, as input_stats does
    # Per call: input tensor -> the terms its statistics added, so modules reading the same
    # tensor (q/k/v, gate/up) compute its Gram matrix once. The tensor is held until the
    # call ends, so no other tensor can take its id meanwhile. Conv2d inputs are unfolded
    # by each module's own kernel, so they are not shared.
    shared: dict[int, tuple[torch.Tensor, tuple]] = {}

    def hook_for(name: str, layout: str):
        def grab(module: nn.Module, args: tuple, output: Any) -> None:
            if name in seen:
                return
            seen.add(name)
            raw = args[0]
            if layout != "conv2d" and id(raw) in shared and shared[id(raw)][0] is raw:
                sums[name].add_terms(shared[id(raw)][1])
                return
            x = input_features(module, layout, raw)
            terms = sums[name].add(x.to(torch.promote_types(x.dtype, torch.float32)))
            if layout != "conv2d":
                shared[id(raw)] = (raw, terms)

        return grab

    with _hooked(modules, hook_for):
        for call in calls:
            seen.clear()
            shared.clear()
            run_block(block, call)
            shared.clear()
    return {name: s.result(processes) for name, s in sums.items()}


@contextlib.contextmanager
def _hooked(modules: list[tuple[str, nn.Module, str]], hook_for: Any) -> Iterator[None]:
    """``hook_for(name, layout)`` on each module as a forward hook, always removed on exit."""
    with tracked_hooks() as hooks:
        for name, module, layout in modules:
            hooks.append(module.register_forward_hook(hook_for(name, layout)))
        yield


def _kernel_positions(module: nn.Module) -> int:
    return int(module.weight.shape[2] * module.weight.shape[3])


def has_input_features(module: nn.Module, layout: str) -> bool:
    """Whether :func:`input_features` reads this module's inputs (every module but a grouped
    Conv2d, whose output channels each read only their group's inputs).

    Example:
        >>> has_input_features(nn.Conv2d(4, 4, 3, groups=2), "conv2d"), has_input_features(nn.Linear(2, 2), "linear")
        (False, True)
    """
    return layout != "conv2d" or module.groups == 1


def conv_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """The padding a Conv2d applies to its input, as ``F.pad`` takes it: ``(left, right,
    top, bottom)``. ``"valid"`` pads nothing; ``"same"`` (stride 1) pads ``dilation *
    (kernel - 1)`` per dimension, the smaller half first, as torch does (so one more on the
    right and bottom for an even kernel); a number pads both sides alike.

    Example:
        >>> conv_padding(nn.Conv2d(1, 1, kernel_size=(3, 4), padding="same"))
        (1, 2, 1, 1)
    """
    if module.padding == "valid":
        return (0, 0, 0, 0)
    if module.padding == "same":
        pads: list[int] = []
        for kernel, dilation in reversed(list(zip(module.kernel_size, module.dilation))):  # width first
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    top, left = module.padding
    return (left, left, top, top)


def input_features(module: nn.Module, layout: str, x: torch.Tensor) -> torch.Tensor:
    """A module's input as ``(tokens, features)``, features matching its weight columns.

    Linear and Conv1D: the last dimension. Conv2d: every receptive field of the input as
    the module pads it (:func:`conv_padding`, with its ``padding_mode``), features ordered
    kernel-position-major so they line up with the ``(out * positions, in)`` weight view,
    one row per output pixel.

    Example:
        >>> conv = nn.Conv2d(2, 4, kernel_size=3, padding="same")
        >>> input_features(conv, "conv2d", torch.randn(1, 2, 5, 5)).shape
        torch.Size([25, 18])
    """
    if layout != "conv2d":
        return x.reshape(-1, x.shape[-1])
    if not has_input_features(module, layout):
        raise SettingError(
            f"input statistics for grouped Conv2d are not supported ({module})",
            field="mask", hint=f"use {setting('mask', 'magnitude')} or leave the module out with {setting('ignore')}",
        )
    n, c = x.shape[:2]
    left, right, top, bottom = conv_padding(module)
    padding: Any = (top, left)
    if module.padding_mode != "zeros" or (left, top) != (right, bottom):  # what unfold's own zero padding cannot do
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x, padding = torch.nn.functional.pad(x, (left, right, top, bottom), mode=mode), 0
    cols = torch.nn.functional.unfold(
        x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride
    )  # (n, c * positions, pixels), channel-major
    positions = cols.shape[1] // c
    return cols.reshape(n, c, positions, -1).permute(0, 3, 2, 1).reshape(-1, positions * c)


@dataclass
class MethodResult:
    """A method's answer: the new weight and its keep-mask (``(rows, inputs)`` view)."""

    weight_rows: torch.Tensor
    mask_rows: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """The options of one pruning method. A method's subclass sets ``name`` (what
    ``PruneConfig.method``, recipes and ``--method`` call the method) and declares each
    option as a field with its type, help text and the rules of its values (choices or
    bounds, :func:`~snows_hf.fields.config_field`), all checked on creation
    (:func:`~snows_hf.fields.check_fields`).

    Example:
        >>> from snows_hf.methods import SnowsConfig
        >>> options = SnowsConfig(k_step=1)
        >>> options.name, options.k_step, options.target
        ('snows', 1, 'dense-stream')
    """

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class MethodPlan:
    """A method's part of the dry-run plan (:func:`snows_hf.plan.plan_run`); the defaults
    are those of a method that works on each module alone.

    Attributes:
        settings: what the plan's method line says after the sparsity (``", K=3, ..."``).
        calibration: what its micro-batch line says after the count (``", 1 held out ..."``).
        window_k: the operations after each module that the method's work spans, traced
            for the plan's window column (``None``: the module alone).
    """

    settings: str = ""
    calibration: str = ""
    window_k: int | None = None

    def footer(self, modules: list, batch_size: int) -> list[str]:
        """The lines that end the plan, from its modules (each a
        :class:`~snows_hf.plan.ModulePlan` with its ``window_bytes``): none here.

        Example:
            >>> MethodPlan().footer([], batch_size=8)
            []
        """
        return []


class Method:
    """Base class of pruning methods: a subclass names its options' class (``config_class``,
    whose ``name`` the method is registered under) and implements ``prune_module``.

    A method is built with the run's :class:`~snows_hf.config.PruneConfig`: its own
    options are ``config.method``, the settings every method shares (``mask``, ...) the
    other fields. It also says what it is in a run's words: its part of the dry-run plan
    (:meth:`plan`) and, from a run's stored settings, of the terminal summary, of the
    saved ``config.json`` and of the model card.
    """

    config_class: type[MethodConfig] = MethodConfig
    #: whether the pipeline must also propagate the dense network's activations
    needs_dense_stream: bool = False
    #: whether the run's ``mask`` setting picks this method's mask (it is shown beside it then)
    uses_mask_setting: bool = True
    #: the model card's sentence on what the method did to the weights
    card_paragraph: str = ""
    #: what the method does, in a few words (the command line's ``--method`` help lists it)
    description: str = ""
    #: the heading of its options in ``--help`` (default: ``description``)
    options_title: str = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def mask_selector(self) -> str:
        """Name of the mask selector this method prunes with."""
        return self.config.mask

    @property
    def fits_data(self) -> bool:
        """Whether the weights this method writes depend on the calibration inputs (random
        inputs then give a model fitted to noise)."""
        return True

    def block_statistics(self) -> frozenset[str]:
        """Input statistics to collect for every module of a block in one forward, before
        any of them is pruned (see :func:`block_input_stats`); empty: each module gets its
        own when it asks (:meth:`ModuleJob.input_stats`), after the modules before it in
        the block are pruned.

        Example:
            >>> from snows_hf import PruneConfig
            >>> sorted(get_method("mask-only")(PruneConfig(sparsity="2:4", method="mask-only", mask="sparsegpt")).block_statistics())
            ['gram', 'input_sq']
        """
        return frozenset()

    @property
    def prunes_blocks(self) -> bool:
        """Whether the pipeline hands this method all of a block's modules at once
        (:meth:`prune_block`) instead of one at a time (:meth:`prune_module`, the default)."""
        return False

    def prune_module(self, job: ModuleJob) -> MethodResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def prune_block(self, jobs: list[ModuleJob]) -> list[MethodResult]:  # pragma: no cover - abstract
        """One result per job, for every targeted module of one block (in execution order),
        when :attr:`prunes_blocks` says so. No job's module is pruned yet: the block is
        still dense in the model, and each job's ``dense_overrides`` is empty."""
        raise NotImplementedError

    def plan(self, micro_batches: int) -> MethodPlan:
        """The method's part of the dry-run plan of a run with ``micro_batches`` calibration
        micro-batches.

        Example:
            >>> from snows_hf import PruneConfig
            >>> get_method("snows")(PruneConfig(sparsity="2:4")).plan(8).calibration
            ', 1 held out for the line search'
        """
        return MethodPlan()

    @classmethod
    def summary(cls, settings: Mapping[str, Any]) -> str:
        """The method as the terminal summary says it, from a run's stored (flat) settings.

        Example:
            >>> Method.summary({"method": "mask-only", "mask": "wanda"})
            'method mask-only, mask wanda'
        """
        return f"method {settings['method']}" + (f", mask {settings['mask']}" if cls.uses_mask_setting else "")

    @classmethod
    def metadata(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The method's entries in the ``sparsity`` block of a saved model's ``config.json``,
        from the run's stored (flat) settings.

        Example:
            >>> Method.metadata({"method": "mask-only", "mask": "wanda"})
            {'method': 'mask-only', 'mask': 'wanda'}
        """
        return {"method": settings["method"], **({"mask": settings["mask"]} if cls.uses_mask_setting else {})}

    @classmethod
    def card_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The method's rows of the model card's settings table, from the run's stored
        (flat) settings.

        Example:
            >>> Method.card_settings({"method": "mask-only", "mask": "wanda"})
            [('method', 'mask-only'), ('mask', 'wanda')]
        """
        return [("method", settings["method"])] + ([("mask", settings["mask"])] if cls.uses_mask_setting else [])


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method under its options' name (``cls.config_class.name``); an empty or
    taken name is an error.

    Example:
        >>> from snows_hf.methods import MaskOnly
        >>> @dataclass
        ... class KeepConfig(MethodConfig):
        ...     name = "keep"
        >>> class Keep(MaskOnly):
        ...     config_class = KeepConfig
        >>> register_method(Keep) is get_method("keep")
        True
        >>> del METHODS["keep"]  # this example's method only
    """
    options = cls.config_class
    if not (isinstance(options, type) and issubclass(options, MethodConfig)):
        raise ValueError(f"{cls.__name__}.config_class must be a MethodConfig subclass, got {options!r}")
    if not options.name or options.name in METHODS:
        raise ValueError(f"method name {options.name!r} is empty or already registered")
    METHODS[options.name] = cls
    return cls


def get_method(name: str | MethodConfig) -> type[Method]:
    """The method registered under ``name`` (or under a method config's name), with an
    error listing the known names.

    Example:
        >>> get_method("snows").config_class.__name__
        'SnowsConfig'
    """
    key = name.name if isinstance(name, MethodConfig) else name
    try:
        return METHODS[key]
    except KeyError:
        raise ValueError(f"unknown method {key!r}; choose one of: {', '.join(sorted(METHODS))}") from None
