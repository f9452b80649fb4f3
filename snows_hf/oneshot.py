"""One-shot pruning of a model in memory: :func:`prune_` (calibration inputs in, a pruned
model and its per-layer report out), with :func:`as_batches` (what it takes as calibration)
and :func:`check_targets_fit` (what it refuses before any pruning)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

import torch
from torch import nn

from .adapters import block_targets, checkpoint_names, find_block_list, weight_layout
from .checkpoint import RunCheckpoint
from .config import PruneConfig
from .fields import allowed, checked_arguments
from .masks import check_fits, to_rows
from .pipeline import prune_blocks
from .report import PruneReport

Calibration = Union[torch.Tensor, Mapping[str, Any], Iterable[Union[Mapping[str, Any], torch.Tensor]]]


@checked_arguments(batch_size=allowed(minimum=1))
def as_batches(calibration: Calibration, batch_size: int, main_input_name: str = "input_ids") -> list[dict]:
    """Normalise calibration data into a list of model-input micro-batches.

    Accepts a tensor (the model's main input), one mapping of stacked inputs (split into
    micro-batches of ``batch_size`` along the first dimension), or an iterable of either
    (a ``DataLoader`` included), each item taken as one micro-batch.

    Example:
        >>> batches = as_batches({"input_ids": torch.zeros(10, 16, dtype=torch.long)}, 4)
        >>> [b["input_ids"].shape[0] for b in batches]
        [4, 4, 2]
    """
    if isinstance(calibration, torch.Tensor):
        calibration = {main_input_name: calibration}
    if isinstance(calibration, Mapping):
        tensors = {k: v for k, v in calibration.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise ValueError("calibration mapping holds no tensors")
        n = next(iter(tensors.values())).shape[0]
        if any(v.shape[0] != n for v in tensors.values()):
            raise ValueError("calibration tensors disagree on the number of samples (first dimension)")
        batches = [
            {k: (v[i : i + batch_size] if isinstance(v, torch.Tensor) else v) for k, v in calibration.items()}
            for i in range(0, n, batch_size)
        ]
    else:
        batches = [{main_input_name: b} if isinstance(b, torch.Tensor) else dict(b) for b in calibration]
    if not batches or all(_num_samples(b) == 0 for b in batches):
        raise ValueError("calibration data is empty: at least one sample is needed")
    return batches


def _num_samples(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 0


@checked_arguments()
def prune_(
    model: nn.Module, config: PruneConfig | Mapping[str, Any], calibration: Calibration, *, progress: bool = False,
    checkpoint: RunCheckpoint | None = None,
) -> PruneReport:
    """Prune ``model`` in place and return a per-layer report.

    Blocks are processed in order; in each, every targeted module gets a mask (and, for
    re-fitting methods, new surviving weights) from the calibration inputs that reach it.
    Embeddings, heads and anything outside the blocks are never touched.

    Args:
        model: a transformers ``PreTrainedModel`` (or any module with a ``config`` and a
            list of blocks).
        config: a :class:`PruneConfig`, or its flat form as a dict (:meth:`PruneConfig.from_dict`).
        calibration: model inputs (see :func:`as_batches`).
        progress: show a progress bar over blocks.
        checkpoint: a :class:`~snows_hf.checkpoint.RunCheckpoint`: every finished block is
            saved there, and a run it already holds blocks of continues after them
            (same final weights as an uninterrupted run).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=2, num_attention_heads=4, vocab_size=100))
        >>> from snows_hf.methods import SnowsConfig
        >>> config = PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=2), batch_size=4)
        >>> report = prune_(model, config, torch.randint(0, 100, (16, 16)))
        >>> round(report.sparsity, 2), report.layers[0].metrics["k"]
        (0.5, 2)
    """
    if not isinstance(config, PruneConfig):
        config = PruneConfig.from_dict(config)
    check_targets_fit(model, config)
    main_input = getattr(model, "main_input_name", "input_ids")
    batches = as_batches(calibration, config.batch_size, main_input)
    torch.manual_seed(config.seed)
    return prune_blocks(model, config, batches, progress=progress, checkpoint=checkpoint)


def check_targets_fit(model: nn.Module, config: PruneConfig) -> None:
    """Refuse, before any pruning, a sparsity that some targeted layer cannot take: N:M
    groups wider than its inputs, or a uniform fraction that zeros it whole
    (:func:`~snows_hf.masks.check_fits`). Under global allocation each layer's share is
    capped below the whole by ``max_layer_sparsity``, so only N:M is checked there.

    Example:
        >>> check_targets_fit(vit, PruneConfig(sparsity="1:100"))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        ValueError: sparsity 1:100 groups 100 inputs, but vit.layers.0.attention.q_proj has only 32 ...
    """
    pattern = config.pattern
    if config.allocation == "global":
        return
    blocks = find_block_list(model, config.block_path)
    saved_names = checkpoint_names(model) if config.targets or config.ignore else {}
    for prefix, block in zip(blocks.names, blocks.modules):
        for name, module in block_targets(block, model, prefix, config.targets, config.ignore, saved_names):
            shape = to_rows(torch.empty(module.weight.shape, device="meta"), weight_layout(module)).shape
            check_fits(pattern, tuple(shape), f"{prefix}.{name}")
