"""Versioned configuration of a pruning run. Field help doubles as command-line help."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from .fields import check_choices, check_types, config_field, require
from .masks import parse_sparsity
from .solver.hvp import HESSIAN_KINDS

CONFIG_VERSION = 2
MAX_SEED = 2**63 - 1  # the largest seed every generator used here (torch, random) takes


def check_seed(seed: int) -> None:
    """Refuse a seed the random generators cannot take (negative, or past 2**63 - 1).

    Example:
        >>> check_seed(2**64)
        Traceback (most recent call last):
        ValueError: seed must be an integer from 0 to 9223372036854775807, got 18446744073709551616
    """
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed}")


@dataclass
class PruneConfig:
    """Settings of one pruning run (``config_version`` 2; a version-1 recipe is read with
    what its keys meant then).

    Example:
        >>> cfg = PruneConfig(sparsity="2:4", method="magnitude")
        >>> cfg.pattern.n, cfg.pattern.m
        (2, 4)
    """

    sparsity: str | float = config_field(None, "target sparsity: N:M (2:4, 4:8, 1:4) or a fraction (0.5, 50%)")
    method: str = config_field(
        "snows", "pruning method: snows (mask, then re-fit over a K-step window), none (mask only), "
        "magnitude (magnitude mask only)"
    )
    mask: str = config_field(
        "sparsegpt", "mask selector used by the snows and none methods (sparsegpt also updates the kept weights; "
        "benchmarks/solver_budget.py measures it against magnitude under SNOWS)"
    )
    allocation: str = config_field(
        "uniform", "unstructured sparsity per layer: uniform (every layer at the target) or global "
        "(one threshold on the mask scores across layers, each layer capped by max_layer_sparsity)",
        choices=("uniform", "global"),
    )
    max_layer_sparsity: float | None = config_field(None, "global allocation: the most any one layer is pruned (default: 0.95, or the target if higher)")
    targets: list[str] | None = config_field(
        None, "regular expressions: prune only block modules whose name (in memory or as saved) "
        "contains a match, or whose type (Linear, Conv1D, Conv2d) matches one (default: the family's targets)"
    )
    ignore: list[str] | None = config_field(None, "regular expressions, matched like targets: never prune these modules")
    diagnostics: bool = config_field(
        True, "compare magnitude and Hessian-scaled masks per layer in the report (one extra block "
        "forward per module when the mask itself needs no statistics)"
    )
    stats_dtype: str = config_field("float32", "dtype of the input statistics the mask selectors use (float32 or float64)",
                                    choices=("float32", "float64"))
    k_step: int = config_field(3, "SNOWS: operations downstream of each module in its re-fit window (0 = layer-wise)")
    target: str = config_field(
        "dense-stream", "SNOWS: dense targets from the dense network's own activations (dense-stream) "
        "or from the pruned network's (official)", choices=("dense-stream", "official"),
    )
    term_scale: str = config_field("energy", "SNOWS: weigh each window term by 1/its dense energy (energy) or not (none)",
                                   choices=("energy", "none"))
    init: str = config_field(
        "auto", "SNOWS: start from the closed-form K=0 least-squares fit (lsq), from the mask selector's weight "
        "(mask: SparseGPT's own update, or the masked weight), or auto (mask when the selector updates weights, else lsq)",
        choices=("auto", "lsq", "mask"),
    )
    hessian: str = config_field("gauss-newton", "SNOWS: Hessian-vector products, gauss-newton (PSD) or exact",
                                choices=HESSIAN_KINDS)
    newton_steps: int = config_field(2, "SNOWS: Newton steps per module")
    cg_iters: int = config_field(5, "SNOWS: conjugate-gradient iterations per Newton step at most")
    damping: float = config_field(1e-4, "SNOWS: damping added to the Hessian")
    preconditioner: str = config_field(
        "input-energy", "SNOWS: CG preconditioner, input-energy (each weight scaled by the energy of the input "
        "feature it multiplies, the diagonal of the layer's Gram matrix) or none", choices=("input-energy", "none"),
    )
    holdout: float = config_field(0.125, "SNOWS: share of calibration micro-batches held out for the line search")
    batches_per_step: int | None = config_field(None, "SNOWS: micro-batches per Newton step (default: all)")
    hessian_batches: int | None = config_field(
        None, "SNOWS: of a Newton step's micro-batches, how many give the Hessian-vector products "
        "(sub-sampled Newton; the gradient uses all of them; default: all)"
    )
    batch_size: int = config_field(8, "calibration samples per micro-batch")
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
    seed: int = config_field(0, "random seed")
    config_version: int = config_field(CONFIG_VERSION, "version of this configuration schema", cli=False)

    def __post_init__(self) -> None:
        check_types(self)
        if self.sparsity is None:
            raise ValueError("a sparsity is required, e.g. sparsity='2:4' or sparsity='50%'")
        self.sparsity = str(parse_sparsity(self.sparsity))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        check_seed(self.seed)
        require(self.k_step >= 0, f"k_step must be >= 0, got {self.k_step}")
        check_choices(self)
        require(self.newton_steps >= 0, f"newton_steps must be >= 0, got {self.newton_steps}")
        require(self.cg_iters >= 1, f"cg_iters must be >= 1, got {self.cg_iters}")
        require(self.damping >= 0, f"damping must be >= 0, got {self.damping}")
        require(0 < self.holdout < 1, f"holdout must be strictly between 0 and 1, got {self.holdout}")
        require(self.batches_per_step is None or self.batches_per_step >= 1, f"batches_per_step must be >= 1, got {self.batches_per_step}")
        require(self.hessian_batches is None or self.hessian_batches >= 1, f"hessian_batches must be >= 1, got {self.hessian_batches}")
        if self.allocation == "global":
            require(not self.pattern.is_nm, f"global allocation needs an unstructured sparsity (like 0.7), not {self.sparsity}")
            if self.max_layer_sparsity is None:
                self.max_layer_sparsity = max(0.95, self.pattern.fraction)
        elif self.max_layer_sparsity is not None:
            raise ValueError("max_layer_sparsity applies to allocation='global' only (--allocation global)")
        if self.max_layer_sparsity is not None:
            cap = self.max_layer_sparsity
            require(0 < cap < 1, f"max_layer_sparsity must be strictly between 0 and 1, got {cap}")
            require(cap >= self.pattern.fraction, f"max_layer_sparsity {cap} is below the target sparsity {self.sparsity}")
        for name in ("targets", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [value]
                setattr(self, name, value)
            for pattern in value or ():
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name} pattern {pattern!r} is not a regular expression: {err}") from None
        if self.max_memory is not None:
            import torch

            from .placement import parse_max_memory

            parse_max_memory(self.max_memory, torch.device("cpu"))  # fails early on a bad size
        if self.config_version != CONFIG_VERSION:
            raise ValueError(f"config_version {self.config_version} is not supported (this is {CONFIG_VERSION})")
        from .methods import get_method

        from .masks import get_selector

        get_method(self.method)  # fail early, listing the known names
        get_selector(self.mask)

    @property
    def pattern(self):
        """The parsed :class:`~snows_hf.masks.SparsityPattern`."""
        return parse_sparsity(self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (what recipes and reports store)."""
        return asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field ``name``."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}[name]
