"""Architecture knowledge: block discovery and default targets, kept as data."""

from . import families  # noqa: F401  (registers the built-in entries)
from .base import ADAPTERS, Adapter, adapter_for, block_targets, find_block_list, register_adapter, weight_layout

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "block_targets", "find_block_list", "register_adapter", "weight_layout"]
