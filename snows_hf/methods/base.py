"""Pruning methods: what happens to one targeted module, given its block's inputs.

A method turns a :class:`ModuleJob` into a :class:`MethodResult` (new weight and keep-mask,
both in the ``(rows, inputs)`` view of :mod:`snows_hf.masks.layout`), or, when it says it
prunes blocks (:attr:`Method.prunes_blocks`), the jobs of all of a block's modules into
one result each, or, when it prunes groups (:attr:`Method.prunes_groups`), the jobs of the
modules that read one input. It never writes into the model itself: the pipeline does, so every
method gets the same bookkeeping.
Its options are a :class:`MethodConfig` of its own, whose ``name`` it is registered under.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import torch

from ..fields import check_fields
from .job import ModuleJob

if TYPE_CHECKING:  # the settings name the methods: a run-time import would be a circle
    from ..config import PruneConfig


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


@dataclass
class LayerPlot:
    """A method's panel of the model card's plot, under the per-layer sparsity: one line
    per series over the pruned layers (:meth:`Method.card_plot`).

    Attributes:
        ylabel: the panel's y-axis label.
        series: ``(label, values, colour)`` of each line, a value per layer.
        log: whether the y axis is logarithmic.

    Example:
        >>> LayerPlot("error", [("re-fitted", [0.5, 0.25], "#55a868")], log=True).series[0][1]
        [0.5, 0.25]
    """

    ylabel: str
    series: list[tuple[str, list[float], str]]
    log: bool = False


class Method:
    """Base class of pruning methods: a subclass names its options' class (``config_class``,
    whose ``name`` the method is registered under) and implements ``prune_module``.

    A method is built with the run's :class:`~snows_hf.config.PruneConfig`: its own
    options are ``config.method``, the settings every method shares (``mask``, ...) the
    other fields. It also says what it is in a run's words: its part of the dry-run plan
    (:meth:`plan`) and, from a run's stored settings, of the terminal summary, of the
    saved ``config.json`` and of the model card. And it speaks for its own results, the
    ``metrics`` it puts into each layer's record (keys it declares in
    :attr:`metric_keys`): the per-layer log line (:meth:`layer_text`), the run's figures
    and their log lines (:meth:`run_figures`, :meth:`run_lines`), the model card's
    per-layer column and plot (:meth:`card_column`, :meth:`card_plot`). The pipeline and
    the card read none of those keys themselves; the defaults here say nothing.
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
    #: every key this method puts into a layer's ``metrics`` (only its own words read them)
    metric_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: PruneConfig) -> None:
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
        any of them is pruned (see :func:`~snows_hf.statistics.block_input_stats`); empty:
        each module gets its own when it asks (:meth:`ModuleJob.input_stats`), after the
        modules before it in the block are pruned.

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

    @property
    def prunes_groups(self) -> bool:
        """Whether the pipeline hands this method the modules that read one input (a
        block's ``q/k/v_proj``, its ``gate/up_proj``) at once (:meth:`prune_group`); a
        module that shares its input with none still goes to :meth:`prune_module`."""
        return False

    def prune_module(self, job: ModuleJob) -> MethodResult:  # pragma: no cover - abstract
        """The extension point of a method: prune one module. ``job`` holds the module (its
        weight still the current one), its pattern, its block and that block's calibration
        inputs (:meth:`ModuleJob.input_stats`, :meth:`ModuleJob.module_inputs`); the answer
        is the new weight and keep-mask in the ``(rows, inputs)`` view, with ``metrics`` for
        the layer's record. The pipeline writes them into the model (pruned weights as
        +0.0), in execution order, so the next module's inputs come from the pruned ones.

        Example (a method registered from outside: the run's mask, the kept weights scaled):
            >>> from snows_hf import PruneConfig, prune_
            >>> from snows_hf.fields import config_field
            >>> from snows_hf.masks import apply_selector, get_selector
            >>> @dataclass
            ... class ShrinkConfig(MethodConfig):
            ...     name = "shrink"
            ...     factor: float = config_field(0.5, "scale of the kept weights", minimum=0)
            >>> class Shrink(Method):
            ...     config_class = ShrinkConfig
            ...     metric_keys = frozenset({"kept"})
            ...     def prune_module(self, job):
            ...         stats = job.input_stats(get_selector(self.mask_selector).needs)
            ...         rows, mask = apply_selector(self.mask_selector, job.weight_rows(), job.pattern, stats)
            ...         kept = float(mask.float().mean())
            ...         return MethodResult(rows * self.config.method.factor, mask, {"kept": kept})
            ...     @classmethod
            ...     def layer_text(cls, metrics):
            ...         return f", {metrics['kept']:.0%} kept"
            >>> _ = register_method(Shrink)
            >>> from transformers import LlamaConfig, LlamaForCausalLM
            >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            ...                                      num_attention_heads=2, vocab_size=50))
            >>> config = PruneConfig(sparsity="2:4", method=ShrinkConfig(factor=0.9), mask="magnitude", batch_size=2)
            >>> prune_(model, config, torch.randint(0, 50, (4, 8))).layers[0].metrics
            {'kept': 0.5}
            >>> del METHODS["shrink"]  # this example's method only
        """
        raise NotImplementedError

    def prune_block(self, jobs: list[ModuleJob]) -> list[MethodResult]:  # pragma: no cover - abstract
        """The extension point of a method that prunes a block at a time (when
        :attr:`prunes_blocks` says so): one result per job, for every targeted module of one
        block (in execution order). No job's module is pruned yet: the block is still dense
        in the model, and each job's ``dense_overrides`` is empty.

        Example (each module as :meth:`prune_module` would, all from the dense block):
            >>> class ShrinkBlock(Shrink):  # doctest: +SKIP
            ...     prunes_blocks = True
            ...     def prune_block(self, jobs):
            ...         return [self.prune_module(job) for job in jobs]
        """
        raise NotImplementedError

    def prune_group(self, jobs: list[ModuleJob]) -> list[MethodResult]:  # pragma: no cover - abstract
        """The extension point of a method that prunes modules reading one input together
        (when :attr:`prunes_groups` says so): one result per job, in execution order. The
        modules before the group in the block are pruned, the group's own are not yet.

        Example (each module as :meth:`prune_module` would):
            >>> class ShrinkGroup(Shrink):  # doctest: +SKIP
            ...     prunes_groups = True
            ...     def prune_group(self, jobs):
            ...         return [self.prune_module(job) for job in jobs]
        """
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


    @classmethod
    def layer_text(cls, metrics: Mapping[str, Any]) -> str:
        """What a layer's log line says of its ``metrics``, between its sparsity and its
        seconds (``", window loss ..."``): nothing here.

        Example:
            >>> Method.layer_text({})
            ''
        """
        return ""

    @classmethod
    def run_figures(cls, report: Any) -> dict[str, Any]:
        """The method's figures over all layers of a finished run (``report``: its
        :class:`~snows_hf.report.PruneReport`), kept as the report's ``solver``: none here.

        Example:
            >>> Method.run_figures(None)
            {}
        """
        return {}

    @classmethod
    def run_lines(cls, figures: Mapping[str, Any]) -> list[str]:
        """The log lines that say :meth:`run_figures` at the end of a run: none here.

        Example:
            >>> Method.run_lines({})
            []
        """
        return []

    @classmethod
    def card_column(cls, metrics: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        """The heading and the cells (one per layer, from each layer's ``metrics``) of the
        last column of the model card's per-layer table.

        Example:
            >>> Method.card_column([{}, {}])
            ('reconstruction error (not measured without a re-fit)', ['', ''])
        """
        return "reconstruction error (not measured without a re-fit)", [""] * len(metrics)

    @classmethod
    def card_plot(cls, metrics: Sequence[Mapping[str, Any]]) -> LayerPlot | None:
        """The model card's panel under the per-layer sparsity, from each layer's
        ``metrics``: none here.

        Example:
            >>> Method.card_plot([{}]) is None
            True
        """
        return None


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
