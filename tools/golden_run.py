"""A golden run: a few ``snows-hf prune`` runs on tiny models, digested for comparison.

A refactor that changes nothing a user sees must leave these digests equal bit for bit:
the sha256 of every saved tensor, the recipe text, and each per-layer record of
``report.json`` (without its timings). Run it on two checkouts and compare the files:

    python tools/golden_run.py --out before.json          # in the old checkout
    python tools/golden_run.py --out after.json --compare before.json

Each run goes through ``python -m snows_hf`` from the checkout this file is in, on tiny
models built from configs (the ones the tests use), with random calibration data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "llama-snows-2of4": ("llama", ["--sparsity", "2:4"]),
    "llama-snows-block-50": ("llama", ["--sparsity", "50%", "--refit-unit", "block", "--save-format", "compact"]),
    "vit-mask-only-sparsegpt": ("vit", ["--sparsity", "2:4", "--method", "none", "--mask", "sparsegpt"]),
    "gpt2-snows-fast-4of8": ("gpt2", ["--sparsity", "4:8", "--method", "snows-fast"]),
    "bert-magnitude-70": ("bert", ["--sparsity", "70%", "--method", "magnitude"]),
}
TIMING = ("second", "time", "elapsed")


def build_models(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest  # the tests' tiny models
    from transformers import ViTImageProcessor

    made = {}
    for name, (model, processor) in {
        "llama": (conftest.tiny_llama(), conftest.tiny_tokenizer()),
        "gpt2": (conftest.tiny_gpt2(), conftest.tiny_tokenizer()),
        "bert": (conftest.tiny_bert(), conftest.tiny_tokenizer()),
        "vit": (conftest.tiny_vit(), ViTImageProcessor(size={"height": 32, "width": 32})),
    }.items():
        made[name] = folder / f"tiny-{name}"
        model.save_pretrained(made[name])
        processor.save_pretrained(made[name])
    return made


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def digest(folder: Path) -> dict:
    from safetensors import safe_open

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in sorted(f.keys()):
                t = f.get_tensor(key)
                tensors[f"{file.name}:{key}"] = hashlib.sha256(t.contiguous().view(-1).view(__import__("torch").uint8)
                                                               .numpy().tobytes()).hexdigest()[:16]
    report = json.loads((folder / "report.json").read_text())
    layers = report.get("layers") or report.get("modules") or []
    return {"tensors": tensors, "recipe": (folder / "recipe.yaml").read_text(), "layers": _untimed(layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", help="an earlier --out file: print every difference, exit 1 if any")
    parser.add_argument("--flags", default="", metavar="'FLAGS'",
                        help="more flags for every SNOWS run, one string (pin a checkout to an earlier version's defaults)")
    parser.add_argument("--shared-keys", action="store_true",
                        help="compare per-layer records on the keys both files hold, and tensors; not recipe texts")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp))
        for name, (model, extra) in RUNS.items():
            out = Path(tmp) / name
            command = [sys.executable, "-m", "snows_hf", "prune", str(models[model]), "--dataset", "random",
                       "--num-samples", "16", "--batch-size", "4", "--output-dir", str(out), "--quiet", *extra]
            if "snows" in name:
                command += shlex.split(args.flags)
            done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name}: exit {done.returncode}\n{done.stderr}")
            results[name] = digest(out)
            print(f"{name}: {len(results[name]['tensors'])} tensors", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        if args.shared_keys:
            for runs in (before, results):
                for run in runs.values():
                    run.pop("recipe", None)
            for name in set(before) & set(results):
                for old, new in zip(before[name]["layers"], results[name]["layers"]):
                    for record in (old, new):
                        metrics = record.get("metrics", {})
                        for key in set(old.get("metrics", {})) ^ set(new.get("metrics", {})):
                            metrics.pop(key, None)
        differences = [f"{name}.{part}" for name in sorted(set(before) | set(results))
                       for part in ("tensors", "recipe", "layers")
                       if before.get(name, {}).get(part) != results.get(name, {}).get(part)]
        print("\n".join(differences) or "identical")
        sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
