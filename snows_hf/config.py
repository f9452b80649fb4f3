"""Versioned configuration of a pruning run. Field help doubles as command-line help.

A :class:`PruneConfig` holds the settings every method shares and, in ``method``, the
chosen method's own options (a :class:`~snows_hf.methods.MethodConfig`). Recipes,
reports and checkpoints store it flat (:meth:`PruneConfig.to_dict`) and
:meth:`PruneConfig.from_dict` reads that form back.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Iterable, Mapping

from .fields import MAX_INT, SettingError, check_fields, check_keys, config_field, require, setting
from .masks import get_selector, parse_sparsity
from .methods import METHODS, MethodConfig, get_method, without_method_alias

CONFIG_VERSION = 5
# The flat form lists the methods' options between the fields that choose what is pruned
# and those that say how the run executes, where config_version 2 first put them:
# recipes and reports of the same settings stay byte-identical.
_OPTIONS_BEFORE = "batch_size"

MAX_SEED = MAX_INT  # the largest seed every generator used here (torch, random) takes


def _method_options() -> dict[str, Any]:
    """Every registered method's options, each with its default (the first method to
    declare a key gives it), in registration order."""
    options: dict[str, Any] = {}
    for method in METHODS.values():
        for f in fields(method.config_class):
            options.setdefault(f.name, f.default if f.default is not MISSING else f.default_factory())
    return options


def option_owners() -> dict[str, list[str]]:
    """Each option of a registered method, and the methods that declare it (their config
    classes' fields, inherited ones included), in registration order.

    Example:
        >>> option_owners()["k_step"], option_owners()["statistics"]
        (['snows', 'snows-fast'], ['mask-only'])
    """
    owners: dict[str, list[str]] = {}
    for name, method in METHODS.items():
        for f in fields(method.config_class):
            owners.setdefault(f.name, []).append(name)
    return owners


def check_method_options(method: str, keys: Iterable[str]) -> None:
    """Refuse, among ``keys``, an option of registered methods that ``method`` does not
    declare: it would be silently ignored. Methods that share an option (``snows-fast``
    has every option of ``snows``) each take it.

    Example:
        >>> check_method_options("snows-fast", ["k_step", "seed"])
        >>> check_method_options("mask-only", ["k_step"])
        Traceback (most recent call last):
        snows_hf.fields.SettingError: k_step is an option of snows and snows-fast, not of mask-only; leave it out, or choose method='snows'
    """
    owners = option_owners()
    for key in keys:
        if key in owners and method not in owners[key]:
            names = owners[key]
            listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
            raise SettingError(f"{setting(key)} is an option of {listed}, not of {method}", field=key,
                               hint=f"leave it out, or choose {setting('method', names[0])}")


@dataclass
class PruneConfig:
    """Settings of one pruning run (``config_version`` 5; a recipe of an older version is
    read with what its keys meant then). ``method`` takes a method's name (its default options) or
    its config; either way it holds the config once made.

    Example:
        >>> from snows_hf.methods import SnowsConfig
        >>> cfg = PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1))
        >>> cfg.pattern.n, cfg.pattern.m, cfg.method.name, cfg.method.k_step
        (2, 4, 'snows', 1)
        >>> PruneConfig(sparsity="50%", method="mask-only", mask="magnitude").method
        MaskOnlyConfig(statistics='block')
    """

    sparsity: str | float = config_field(None, "target sparsity: N:M (2:4, 4:8, 1:4) or a fraction (0.5, 50%)")
    method: str | MethodConfig = config_field("snows", "pruning method")  # the methods registered, listed by the command line
    mask: str = config_field(
        "sparsegpt", "mask selector used by the snows, snows-fast and mask-only methods (sparsegpt also updates the kept weights; "
        "benchmarks/solver_budget.py measures it against magnitude under SNOWS)"
    )
    allocation: str = config_field(
        "uniform", "unstructured sparsity per layer: uniform (every layer at the target) or global "
        "(one threshold on the mask scores across layers, each layer capped by max_layer_sparsity)",
        choices=("uniform", "global"),
    )
    max_layer_sparsity: float | None = config_field(
        None, "global allocation: the most any one layer is pruned (default: 0.95, or the target if higher)",
        minimum=0, maximum=1, strict=True,
    )
    targets: list[str] | None = config_field(
        None, "regular expressions: prune only block modules whose name (in memory or as saved) "
        "contains a match, or whose type (Linear, Conv1D, Conv2d) matches one (default: the family's targets)"
    )
    ignore: list[str] | None = config_field(None, "regular expressions, matched like targets: never prune these modules")
    diagnostics: bool = config_field(
        True, "compare magnitude and Hessian-scaled masks per layer in the report (one extra block "
        "forward per module when the mask itself needs no statistics) and record SNOWS's training window "
        "loss after its re-fit (one more window forward per training micro-batch)"
    )
    stats_dtype: str = config_field("float32", "dtype of the input statistics the mask selectors use (float32 or float64)",
                                    choices=("float32", "float64"))
    batch_size: int = config_field(8, "calibration samples per micro-batch", minimum=1)
    offload_activations: str = config_field(
        "device", "where calibration activations wait between blocks: device, cpu (pinned with a GPU) or disk "
        "(one file per micro-batch, read back when its block runs; removed at the end)", choices=("device", "cpu", "disk"),
    )
    offload_dir: str | None = config_field(
        None, "folder for disk-offloaded activations and (with max_memory) weights, in a temporary subfolder "
        "removed at the end (default: beside the output, else the system's temp folder)"
    )
    device: str = config_field("auto", "execution device: auto, cpu, cuda, cuda:1, mps, ...")
    max_memory: str | None = config_field(
        None, "memory for block weights, e.g. 20GiB (the execution device) or cuda:0=20GiB,cpu=64GiB: blocks "
        "beyond the device's share wait in CPU memory (or on disk beyond the cpu share) and come to the device "
        "a window at a time (default: half the accelerator's free memory)"
    )
    block_path: str | None = config_field(None, "dotted name of the model's block list (overrides discovery)")
    seed: int = config_field(0, "random seed", minimum=0, maximum=MAX_SEED)
    config_version: int = config_field(CONFIG_VERSION, "version of this configuration schema", cli=False)

    def __post_init__(self) -> None:
        if self.sparsity is None:
            raise SettingError("a sparsity is required", field="sparsity",
                               hint=f"e.g. {setting('sparsity', '2:4')} or {setting('sparsity', '50%')}")
        for key, value in without_method_alias({"method": self.method}).items():  # an earlier name: today's
            setattr(self, key, value)
        check_fields(self)
        if self.config_version != CONFIG_VERSION:
            raise SettingError(f"config_version {self.config_version} is not supported (this is {CONFIG_VERSION})",
                               field="config_version")
        self.sparsity = str(parse_sparsity(self.sparsity))
        if self.allocation == "global":
            require(not self.pattern.is_nm, "allocation", f"global allocation needs an unstructured sparsity (like 0.7), not {self.sparsity}")
            if self.max_layer_sparsity is None:
                self.max_layer_sparsity = max(0.95, self.pattern.fraction)
        elif self.max_layer_sparsity is not None:
            raise SettingError("max_layer_sparsity applies to allocation='global' only", field="max_layer_sparsity",
                               hint=f"set {setting('allocation', 'global')} or leave {setting('max_layer_sparsity')} out")
        if self.max_layer_sparsity is not None:
            cap = self.max_layer_sparsity
            require(cap >= self.pattern.fraction, "max_layer_sparsity", f"max_layer_sparsity {cap} is below the target sparsity {self.sparsity}")
        for name in ("targets", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [value]
                setattr(self, name, value)
            for pattern in value or ():
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise SettingError(f"{name} pattern {pattern!r} is not a regular expression: {err}", field=name) from None
        if self.max_memory is not None:
            import torch

            from .placement import parse_max_memory

            try:
                parse_max_memory(self.max_memory, torch.device("cpu"))  # fails early on a bad size
            except SettingError:
                raise
            except ValueError as err:
                raise SettingError(f"{setting('max_memory')}: {err}", field="max_memory") from None
        self.method = _method_config(self.method)  # fails early, listing the known names
        try:
            get_selector(self.mask)
        except ValueError as err:
            raise SettingError(str(err), field="mask") from None

    @property
    def pattern(self):
        """The parsed :class:`~snows_hf.masks.SparsityPattern`."""
        return parse_sparsity(self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        """The settings as one flat dict, what recipes, reports and checkpoints store: the
        shared fields, ``method`` as its name, and the options of every registered method
        (the chosen one's values, the others' defaults), keys in :meth:`flat_keys` order.

        Example:
            >>> from snows_hf.methods import SnowsConfig
            >>> flat = PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1)).to_dict()
            >>> flat["method"], flat["k_step"], flat["batch_size"]
            ('snows', 1, 8)
        """
        values = asdict(self)  # the method's options as a dict of their own
        values |= _method_options() | values["method"]
        values["method"] = self.method.name
        return {key: values[key] for key in self.flat_keys()}

    @classmethod
    def flat_keys(cls) -> list[str]:
        """The keys of the flat form (:meth:`to_dict`, a recipe's ``prune:``), in order:
        the shared fields, with every registered method's options before ``batch_size``.

        Example:
            >>> PruneConfig.flat_keys()[8:11]
            ['stats_dtype', 'statistics', 'k_step']
        """
        names = [f.name for f in fields(cls)]
        at = names.index(_OPTIONS_BEFORE)
        return names[:at] + list(_method_options()) + names[at:]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PruneConfig:
        """Settings from their flat form (:meth:`to_dict`, a recipe's ``prune:``, a dict of
        fields). ``method`` names the method, whose options take their keys. The flat form
        holds every registered method's options, so another method's option is taken at
        the value :meth:`to_dict` stores for it (its default) and refused at any other
        (it would be ignored: :func:`check_method_options`); any other key is an error. With
        a method config in place of a name, that config holds the options.

        Example:
            >>> from snows_hf.methods import SnowsConfig
            >>> config = PruneConfig.from_dict({"sparsity": "2:4", "method": "snows", "k_step": 1})
            >>> config.method.k_step, config.method.cg_iters == SnowsConfig().cg_iters
            (1, True)
            >>> PruneConfig.from_dict({"sparsity": "2:4", "method": "mask-only", "k_step": 3}).method
            MaskOnlyConfig(statistics='block')
            >>> PruneConfig.from_dict({"sparsity": "2:4", "method": "mask-only", "k_step": 1})
            Traceback (most recent call last):
            snows_hf.fields.SettingError: k_step is an option of snows and snows-fast, not of mask-only; leave it out, or choose method='snows'
        """
        check_keys(cls.flat_keys(), values)
        values = without_method_alias(values)  # an earlier method name, read as today's (one deprecation line)
        shared = {f.name: f for f in fields(cls)}
        method = values.get("method", shared["method"].default)
        if isinstance(method, str):
            options = _method_class(method)
            stored = _method_options()
            changed = [key for key, value in values.items()
                       if key in stored and (type(value) is not type(stored[key]) or value != stored[key])]
            check_method_options(method, changed)
            method = options(**{f.name: values[f.name] for f in fields(options) if f.name in values})
        elif isinstance(method, MethodConfig):
            given = [f.name for f in fields(method) if f.name in values]
            require(not given, given[0] if given else "method", f"{', '.join(given)} belong in the method's config, not beside it")
        return cls(**{k: v for k, v in values.items() if k in shared and k != "method"}, method=method)


def _method_class(name: str) -> type[MethodConfig]:
    """The options' class of the method registered as ``name``."""
    try:
        return get_method(name).config_class
    except ValueError as err:
        raise SettingError(str(err), field="method") from None


def _method_config(method: Any) -> MethodConfig:
    """``PruneConfig.method`` as a method config: a name becomes its method's defaults."""
    if isinstance(method, str):
        return _method_class(method)()
    expected = _method_class(method.name)
    require(type(method) is expected, "method", f"method {method.name!r} takes a {expected.__name__}, got a {type(method).__name__}")
    return method
