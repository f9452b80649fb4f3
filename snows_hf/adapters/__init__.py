"""Architecture knowledge: block discovery and default targets, kept as data."""

from . import families  # noqa: F401  (registers the built-in entries)
from .base import (ADAPTERS, IDENTITY_CLASSES, OPERATION_CLASSES, Adapter, BlockList, adapter_for, block_targets,
                   check_patterns, find_block_list, register_adapter, weight_layout)
from .naming import checkpoint_names

__all__ = ["ADAPTERS", "IDENTITY_CLASSES", "OPERATION_CLASSES", "Adapter", "BlockList", "adapter_for", "block_targets",
           "check_patterns", "checkpoint_names", "find_block_list", "register_adapter", "weight_layout"]
