"""The documentation's plots, drawn with matplotlib from figures the generator prepares.

``benchmarks/readme_results.py`` reads the JSON under ``benchmarks/results``, computes the
points and their 95% intervals, and calls the functions here; each writes one SVG under
``docs/images``. Every SVG carries, as its ``Description``, a digest of the figures it was
drawn from and of this file, so ``readme_results.py --check`` can tell a stale plot from a
fresh one without comparing drawings (which differ between matplotlib versions).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
_DIGEST = re.compile(r"<dc:description>([0-9a-f]{64})</dc:description>")
COLORS = {"magnitude": "#9e9e9e", "Wanda": "#8d6e63", "SparseGPT": "#1f77b4", "SNOWS K=3": "#d62728",
          "snows-fast": "#ff9896", "SNOWS (default)": "#d62728"}


def digest(data: Any) -> str:
    """A digest of ``data`` (JSON-able) and of this file's code.

    Example:
        >>> digest({"a": 1}) == digest({"a": 1}) != digest({"a": 2})
        True
    """
    text = json.dumps(data, sort_keys=True, default=str) + Path(__file__).read_text(encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def stored_digest(path: Path) -> str | None:
    """The digest an SVG written here carries, or ``None`` (no file, or not ours)."""
    if not path.is_file():
        return None
    found = _DIGEST.search(path.read_text(encoding="utf-8", errors="replace"))
    return found.group(1) if found else None


def _figure(width: float = 7.0, height: float = 4.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "snows-hf", "svg.fonttype": "path", "font.size": 9})
    return plt.subplots(figsize=(width, height))


def _save(fig: Any, name: str, data: Any) -> Path:
    import matplotlib.pyplot as plt

    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / name
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None, "Description": digest(data)})
    plt.close(fig)
    return path


def _error_bars(points: list[dict]) -> list[list[float]]:
    """Matplotlib's ``yerr`` from each point's ``value`` and ``interval`` (zero where none)."""
    low = [p["value"] - p["interval"][0] if p.get("interval") else 0.0 for p in points]
    high = [p["interval"][1] - p["value"] if p.get("interval") else 0.0 for p in points]
    return [low, high]


def sparsity_order(spec: str) -> tuple[float, bool]:
    """Sort key of a sparsity: the share pruned, N:M patterns before the fraction they equal.

    Example:
        >>> sorted(["70%", "1:4", "50%", "2:4", "4:8"], key=sparsity_order)
        ['2:4', '4:8', '50%', '70%', '1:4']
    """
    if ":" in spec:
        n, m = spec.split(":")
        return 1 - int(n) / int(m), False
    return float(spec.rstrip("%")) / (100 if spec.endswith("%") else 1), True


def frontier(points: dict[str, list[dict]], name: str) -> Path:
    """Perplexity against time (x SparseGPT in the same run) per sparsity: SparseGPT at 1,
    each SNOWS budget at its ratio, 95% intervals of each perplexity as bars.

    ``points``: sparsity -> ``[{"label", "ratio", "value", "interval"}]``.
    """
    fig, axes = _figure(7.5, 3.6)
    fig.delaxes(axes)
    grid = fig.subplots(1, len(points), squeeze=False)[0]
    for ax, (spec, pts) in zip(grid, points.items()):
        ax.errorbar([p["ratio"] for p in pts], [p["value"] for p in pts], yerr=_error_bars(pts), fmt="o-",
                    color="#d62728", ecolor="#999999", capsize=3, linewidth=1)
        for i, p in enumerate(pts):  # labels alternate above and below, so neighbours do not overlap
            ax.annotate(p["label"], (p["ratio"], p["value"]), textcoords="offset points",
                        xytext=(6, 8 if i % 2 == 0 else -14), fontsize=8)
        ax.set_title(f"SmolLM2-135M at {spec}")
        ax.set_xlabel("time, x SparseGPT in the same run")
        ax.set_ylabel("held-out perplexity (lower is better)")
        ax.grid(alpha=0.3)
    return _save(fig, name, points)


def by_sparsity(data: dict, name: str) -> Path:
    """One benchmark model's metric at each sparsity, one line per method, 95% intervals as bars.

    ``data``: ``title``, ``metric``, ``log`` (a log scale) and ``series``, method ->
    ``[{"sparsity", "value", "interval"}]`` in the table's sparsity order.
    """
    title, metric, series = data["title"], data["metric"], data["series"]
    fig, ax = _figure(6.5, 3.8)
    order = sorted(dict.fromkeys(p["sparsity"] for pts in series.values() for p in pts), key=sparsity_order)
    for method, pts in series.items():
        xs = [order.index(p["sparsity"]) for p in pts]
        ax.errorbar(xs, [p["value"] for p in pts], yerr=_error_bars(pts), fmt="o-", capsize=3, linewidth=1,
                    label=method, color=COLORS.get(method))
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("sparsity")
    ax.set_ylabel(metric)
    if data["log"]:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, name, data)


def layer_losses(data: dict, name: str) -> Path:
    """Per layer: the window loss of the mask alone, of the start, and after the re-fit.

    ``data``: ``title`` and ``layers``, ``[{"name", "masked", "before", "after"}]`` in pruning order.
    """
    title, layers = data["title"], data["layers"]
    fig, ax = _figure(7.5, 3.8)
    xs = range(len(layers))
    for key, label, style in (("masked", "mask alone", "s:"), ("before", "start of the re-fit", "o--"),
                              ("after", "after the re-fit", "o-")):
        ax.plot(xs, [layer[key] for layer in layers], style, label=label, markersize=3, linewidth=1)
    ax.set_xticks(list(xs), [layer["name"] for layer in layers], rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("window loss on held-out micro-batches")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, name, data)
