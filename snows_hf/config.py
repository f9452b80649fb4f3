"""Versioned configuration of a pruning run. Field help doubles as command-line help."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .masks import parse_sparsity

CONFIG_VERSION = 1


def _field(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class PruneConfig:
    """Settings of one pruning run (``config_version`` 1).

    Example:
        >>> cfg = PruneConfig(sparsity="2:4", method="magnitude")
        >>> cfg.pattern.n, cfg.pattern.m
        (2, 4)
    """

    sparsity: str = _field(None, "target sparsity: N:M (2:4, 4:8, 1:4) or a fraction (0.5, 50%)")
    method: str = _field("magnitude", "pruning method", choices_from="methods")
    batch_size: int = _field(8, "calibration samples per micro-batch")
    device: str = _field("auto", "execution device: auto, cpu, cuda, cuda:1, mps, ...")
    block_path: str | None = _field(None, "dotted name of the model's block list (overrides discovery)")
    seed: int = _field(0, "random seed")
    config_version: int = _field(CONFIG_VERSION, "version of this configuration schema", cli=False)

    def __post_init__(self) -> None:
        if self.sparsity is None:
            raise ValueError("a sparsity is required, e.g. sparsity='2:4' or sparsity='50%'")
        self.sparsity = str(parse_sparsity(self.sparsity))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.config_version != CONFIG_VERSION:
            raise ValueError(f"config_version {self.config_version} is not supported (this is {CONFIG_VERSION})")
        from .methods import get_method

        get_method(self.method)  # fails early with the list of known methods

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
