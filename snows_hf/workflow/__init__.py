"""The whole run from Python: :func:`run` loads, evaluates, prunes, evaluates, saves and
pushes, writing the same folder as ``snows-hf prune``; :func:`evaluate` is ``snows-hf eval``.

:func:`~snows_hf.api.prune_` stays the in-place primitive (a model and calibration tensors
in, a report out); this package owns everything around it, one module per piece:
:mod:`~snows_hf.workflow.pruning` (running a prune), :mod:`~snows_hf.workflow.evaluating`
(evaluating a saved model), :mod:`~snows_hf.workflow.setup` (what both check and load
first), :mod:`~snows_hf.workflow.options` (their option groups),
:mod:`~snows_hf.workflow.log` (the run log) and :mod:`~snows_hf.workflow.result` (what a
run returns). The dry run is :func:`snows_hf.plan.plan`; converting a saved folder,
:func:`snows_hf.export.convert`.

Example:
    >>> import snows_hf
    >>> result = snows_hf.run("google/vit-base-patch16-224", snows_hf.PruneConfig(sparsity="2:4"))  # doctest: +SKIP
    >>> result.output_dir, result.report.sparsity  # doctest: +SKIP
    (PosixPath('vit-base-patch16-224-pruned-2of4'), 0.5)
"""

from ..export import convert
from ..output_folder import checkpoint_dir, default_output_dir, sibling_path
from .evaluating import EVAL_SKIP_SAMPLES, EvalResult, eval_dtype, evaluate
from .log import LOG_FILE, Phases, RunLog, run_log
from .options import EvalOptions, LoadOptions, PushOptions, SaveOptions
from .pruning import push_saved, run
from .result import PairedEvaluation, RunResult
from .setup import check_recorded_text, check_settings, load_for_run, placed_loading, placement

__all__ = ["EVAL_SKIP_SAMPLES", "LOG_FILE", "EvalOptions", "EvalResult", "LoadOptions", "PairedEvaluation", "Phases",
           "PushOptions", "RunLog", "RunResult", "SaveOptions", "check_recorded_text", "check_settings",
           "checkpoint_dir", "convert", "default_output_dir", "eval_dtype", "evaluate", "load_for_run",
           "placed_loading", "placement", "push_saved", "run", "run_log", "sibling_path"]
