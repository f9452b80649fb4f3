"""Where a benchmark's figures go: ``benchmarks/results/<script>.json``, with the run's settings.

``benchmarks/readme_results.py`` renders the README's tables from these files and names the
command each one records, so a file says exactly how to measure it again.

    parser = argparse.ArgumentParser()
    record.out_option(parser, "offload_memory")     # --out, default benchmarks/results/offload_memory.json
    args = parser.parse_args()
    record.write(args.out, {"settings": record.settings(args), "rows": rows})
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def out_option(parser: argparse.ArgumentParser, name: str) -> None:
    """Add ``--out FILE`` to ``parser``, by default ``benchmarks/results/<name>.json``."""
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"),
                        help=f"JSON file the figures go to (default: benchmarks/results/{name}.json)")


def command() -> str:
    """This process's command line as run from the repository root (``python benchmarks/x.py ...``).

    Paths inside the repository are written relative to it, so the line reads the same on
    every machine.
    """
    script = Path(sys.argv[0]).resolve()
    name = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    words = [str(name)] + [arg.replace(f"{ROOT}{os.sep}", "") for arg in sys.argv[1:]]
    return "python " + shlex.join(words)


def settings(args: argparse.Namespace, threads: int | None = None) -> dict:
    """What shaped the figures: the command, its arguments, torch and snows-hf versions, CPU threads,
    and the machine's load average when the figures were written (timings on a shared machine).

    ``threads`` is what the measuring process used, where that is not this one.
    """
    import torch

    import snows_hf

    arguments = {k: v for k, v in vars(args).items() if k != "out"}
    return {
        "command": command(), "arguments": arguments, "torch": torch.__version__,
        "snows_hf": snows_hf.__version__, "threads": threads or torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
    }


def write(path: str | Path, payload: dict) -> None:
    """Write ``payload`` as indented JSON, whole or not at all (a run stopped mid-write leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(part, path)
