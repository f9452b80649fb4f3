"""Deprecated: the earlier name of :mod:`snows_hf.oneshot`, kept so that code importing
``snows_hf.api`` still runs (with one ``DeprecationWarning``)."""

import warnings

from .oneshot import Calibration, as_batches, check_targets_fit, prune_

__all__ = ["Calibration", "as_batches", "check_targets_fit", "prune_"]

warnings.warn("snows_hf.api is deprecated and will be removed: import from snows_hf.oneshot", DeprecationWarning,
              stacklevel=2)
