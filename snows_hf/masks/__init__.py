"""Pure mask math: patterns, weight views and selectors. Imports only torch."""

from .layout import from_rows, to_rows
from .patterns import ACCEPTED_FORMS, SparsityPattern, check_fits, parse_sparsity
from .selectors import SELECTORS, apply_selector, get_selector, register_selector, select_mask
from .sparsegpt import sparsegpt_prune
from .topk import nm_keep_count, satisfies, select_topk

__all__ = [
    "ACCEPTED_FORMS",
    "SELECTORS",
    "SparsityPattern",
    "apply_selector",
    "check_fits",
    "from_rows",
    "get_selector",
    "nm_keep_count",
    "parse_sparsity",
    "register_selector",
    "satisfies",
    "select_mask",
    "select_topk",
    "sparsegpt_prune",
    "to_rows",
]
