"""Hostile inputs (issue 20): crafted compact checkpoints, compact models loaded without
snows-hf, and patterns that would zero whole layers. Each refusal is one line, with
nothing written or lost, and a crafted checkpoint is refused before it can exhaust memory."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_vit
from safetensors.torch import load_file, save_file

import snows_hf
from snows_hf.cli import main
from snows_hf.export import save_pruned

LAYER = "model.layers.0.mlp.up_proj"  # 72 x 32, pruned 2:4
KEY = f"{LAYER}.weight"
WHERE = re.escape(f"quantization_config.layers['{LAYER}']")


@pytest.fixture(scope="module")
def compact_source(tmp_path_factory):
    """A tiny Llama pruned 2:4 and saved compact, and its weights; tests copy the folder."""
    model = tiny_llama()
    report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "magnitude", "diagnostics": False, "batch_size": 4},
                             torch.randint(4, VOCAB, (8, 12)))
    folder = tmp_path_factory.mktemp("compact") / "llama-2of4"
    save_pruned(model, report, folder, save_format="compact")
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def _copy(source: Path, to: Path) -> Path:
    shutil.copytree(source, to)
    return to


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config["quantization_config"])
    path.write_text(json.dumps(config))


def _edit_tensors(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _layer(field, value):
    def edit(qc):
        if value is _DELETE:
            del qc["layers"][LAYER][field]
        else:
            qc["layers"][LAYER][field] = value

    return edit


_DELETE = object()

# case -> (what to change: ("config", edit of quantization_config) or ("tensors", edit), the error it must give)
CRAFTED = {
    "layers-as-list": (("config", lambda qc: qc.update(layers=list(qc["layers"].values()))),
                       r"quantization_config\.layers must map layer names to their entries, not be a list"),
    "layer-entry-not-mapping": (("config", lambda qc: qc["layers"].update({LAYER: "2:4"})), WHERE + r" must be a mapping"),
    "missing-shape-and-layout": (("config", lambda qc: [qc["layers"][LAYER].pop(f) for f in ("shape", "layout")]),
                                 WHERE + r" lacks layout, shape"),
    "negative-shape": (("config", _layer("shape", [72, -32])), WHERE + r"\.shape: \[72, -32\] is not a list of non-negative"),
    "string-shape": (("config", _layer("shape", "72x32")), WHERE + r"\.shape: '72x32' is not a list of non-negative"),
    "float-shape": (("config", _layer("shape", [72.0, 32])), WHERE + r"\.shape: \[72\.0, 32\] is not a list"),
    "other-shape": (("config", _layer("shape", [32, 72])),
                    WHERE + r"\.shape: \[32, 72\] is not the shape of the model's " + re.escape(KEY) + r", \[72, 32\]"),
    "pattern-not-string": (("config", _layer("pattern", 0.5)), WHERE + r"\.pattern: 0\.5 is not a string"),
    "pattern-invalid": (("config", _layer("pattern", "4:2")), WHERE + r"\.pattern: invalid sparsity '4:2'"),
    "layout-unknown": (("config", _layer("layout", "conv3d")), WHERE + r"\.layout: 'conv3d' is not one of"),
    "layout-wrong-rank": (("config", _layer("layout", "conv2d")), WHERE + r"\.layout: conv2d does not fit a weight of 2"),
    "key-not-string": (("config", _layer("key", 7)), WHERE + r"\.key: 7 is not a tensor name"),
    "layer-not-in-model": (("config", lambda qc: qc["layers"].update({"model.nope": dict(qc["layers"][LAYER])})),
                           r"quantization_config\.layers\['model\.nope'\]: the model has no parameter model\.nope\.weight"),
    "format-version-string": (("config", lambda qc: qc.update(format_version="2")),
                              r"quantization_config\.format_version '2' is not 2"),
    "values-integer-dtype": (("tensors", lambda t: t.update({KEY: t[KEY].to(torch.int32)})),
                             re.escape(KEY) + r" must be a 1-D floating-point tensor, got torch\.int32"),
    "values-two-dimensional": (("tensors", lambda t: t.update({KEY: t[KEY].reshape(72, -1)})),
                               re.escape(KEY) + r" must be a 1-D floating-point tensor, got torch\.float32 of shape \[72, 16\]"),
    "code-wrong-dtype": (("tensors", lambda t: t.update({KEY + "_code": t[KEY + "_code"].to(torch.int64)})),
                         re.escape(KEY) + r"_code does not unpack: expected 216 packed bytes \(uint8, 1-D\), got 216 \(torch\.int64\)"),
    "code-extra-byte": (("tensors", lambda t: t.update({KEY + "_code": torch.cat([t[KEY + "_code"], t[KEY + "_code"][:1]])})),
                        re.escape(KEY) + r"_code does not unpack: expected 216 packed bytes"),
    "layer-unlisted": (("config", lambda qc: qc["layers"].pop("model.layers.0.mlp.gate_proj")),
                            r"model\.layers\.0\.mlp\.gate_proj\.weight: has compact tensors \(weight_code\) but "
                            r"quantization_config\.layers does not list model\.layers\.0\.mlp\.gate_proj"),
}


def _crafted(case: str, source: Path, to: Path) -> Path:
    (kind, edit), _ = CRAFTED[case]
    folder = _copy(source, to)
    (_edit_config if kind == "config" else _edit_tensors)(folder, edit)
    return folder


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snows-hf: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_compact_checkpoint_is_one_line_from_python(case, compact_source, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = _crafted(case, compact_source[0], tmp_path / "crafted")
    with pytest.raises(ValueError) as raised:
        AutoModelForCausalLM.from_pretrained(folder)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("cannot load the compact checkpoint: "), message
    assert re.search(CRAFTED[case][1], message), message
    assert "no compact tensors" not in message  # every layer's tensors are there


@pytest.mark.parametrize("command, cases", [("inspect", sorted(CRAFTED)), ("eval", ["layers-as-list", "other-shape"])])
def test_crafted_compact_checkpoint_is_one_line_from_the_cli(command, cases, compact_source, tmp_path, capsys):
    for case in cases:
        folder = _crafted(case, compact_source[0], tmp_path / case)
        before = _listing(tmp_path)
        extra = ["--dataset", "random"] if command == "eval" else []
        assert main([command, str(folder), *extra, "--quiet"]) == 1, case
        line = _one_error_line(capsys)
        assert "cannot load the compact checkpoint: " in line and re.search(CRAFTED[case][1], line), line
        assert _listing(tmp_path) == before


_BOUNDED_LOAD = """
import resource, sys, time
import torch, snows_hf
import transformers.modeling_utils
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))  # 1 GiB beyond now
start = time.perf_counter()
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1])
except ValueError as err:
    print(f"{time.perf_counter() - start:.1f} {err}")
    sys.exit(3)
sys.exit(0)
"""

# declared sizes that would take tens of GiB (2:32's 2**32-entry index, 16:32's 6e8 kept sets,
# zeros of a 10^5 x 10^5 shape): refused from the config alone, within 1 GiB
MEMORY = {
    "pattern-2:32": (_layer("pattern", "2:32"), WHERE + r"\.pattern: sparsity 2:32 groups 32 inputs; the compact format "
                     r"codes groups of at most 16 \(M <= 16\)"),
    "pattern-16:32": (_layer("pattern", "16:32"), WHERE + r"\.pattern: sparsity 16:32 groups 32 inputs"),
    "huge-shape": (_layer("shape", [100000, 100000]), WHERE + r"\.shape: \[100000, 100000\] is not the shape of the model's"),
}


@pytest.mark.parametrize("case", sorted(MEMORY))
def test_crafted_sizes_fail_fast_within_a_memory_bound(case, compact_source, tmp_path):
    edit, message = MEMORY[case]
    folder = _copy(compact_source[0], tmp_path / "crafted")
    _edit_config(folder, edit)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", _BOUNDED_LOAD, str(folder)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 3, result.stderr[-3000:]
    seconds, line = result.stdout.strip().split(" ", 1)
    assert "\n" not in line and re.search(message, line), line
    assert float(seconds) < 30


def test_compact_sparsity_beyond_the_format_is_refused_before_a_run():
    from snows_hf.compact_format import check_compact_sparsity

    for spec in ("2:4", "8:16", "0.5"):
        check_compact_sparsity(spec)
    with pytest.raises(ValueError, match=r"sparsity 2:32 groups 32 inputs; .* at most 16 \(M <= 16\); save it dense"):
        check_compact_sparsity("2:32")


def test_cli_refuses_compact_2_of_32_before_loading(vit_dir, tmp_path, capsys, monkeypatch):
    """Needs cli.cmd_prune to call compact_format.check_compact_sparsity before loading."""
    import snows_hf.loading

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(snows_hf.loading, "load_model", no_load)
    before = _listing(tmp_path)
    argv = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:32", "--method", "magnitude",
            "--save-format", "compact", "--no-eval", "--output-dir", "out", "--quiet"]
    assert main(argv) == 1
    assert "the compact format codes groups of at most 16" in _one_error_line(capsys)
    assert _listing(tmp_path) == before


_PLAIN_LOAD = """
import sys
from transformers import AutoModelForCausalLM
try:
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
finally:
    assert "snows_hf" not in sys.modules
print("LOADED")
"""


def test_plain_transformers_refuses_a_compact_model(compact_source, tmp_path):
    """Without snows-hf, a compact folder must not load as a model with random pruned layers."""
    folder = compact_source[0]
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert "pip install snows-hf" in config["loader"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", _PLAIN_LOAD, str(folder)], capture_output=True, text=True,
                            env=env, timeout=300, cwd=tmp_path)
    assert result.returncode != 0 and "LOADED" not in result.stdout, result.stderr[-3000:]
    assert "snows-hf" in result.stderr and "AssertionError" not in result.stderr, result.stderr[-3000:]


def test_version_1_compact_checkpoints_still_load_bit_exactly(compact_source, tmp_path):
    from transformers import AutoModelForCausalLM

    source, expected = compact_source
    folder = _copy(source, tmp_path / "v1")
    config = json.loads((folder / "config.json").read_text())
    qc = config["quantization_config"]
    config["quantization_config"] = {"quant_method": "snows_sparse", "format_version": 1, "layers": qc["layers"]}
    (folder / "config.json").write_text(json.dumps(config))
    keys = {meta["key"] for meta in qc["layers"].values()}
    _edit_tensors(folder, lambda t: t.update({k + "_values": t.pop(k) for k in keys}))
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


ZEROING = {  # model, sparsity, the error
    "vit-1:100": (tiny_vit, "1:100", r"sparsity 1:100 groups 100 inputs, but vit\.layers\.0\.attention\.q_proj has "
                  r"only 32; choose M <= 32 or leave q_proj out \(ignore\)"),
    "vit-1:64": (tiny_vit, "1:64", r"sparsity 1:64 groups 64 inputs, but vit\.layers\.0\.attention\.q_proj has only 32"),
    "vit-0.999999": (tiny_vit, "0.999999", r"sparsity 99\.9999% would zero all 1024 weights of "
                     r"vit\.layers\.0\.attention\.q_proj \(32 x 32\)"),
    "llama-0.9999": (tiny_llama, "0.9999", r"sparsity 99\.99% would zero all 1024 weights of "
                     r"model\.layers\.0\.self_attn\.q_proj \(32 x 32\); use a fraction below 0\.999512"),
}


@pytest.mark.parametrize("case", sorted(ZEROING))
def test_patterns_that_zero_a_layer_are_refused_before_pruning(case):
    factory, spec, message = ZEROING[case]
    model = factory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = torch.randn(4, 3, 32, 32) if factory is tiny_vit else torch.randint(4, VOCAB, (4, 12))
    with pytest.raises(ValueError, match=message):
        snows_hf.prune_(model, {"sparsity": spec, "method": "magnitude", "batch_size": 4}, inputs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("spec", ["1:32", "2:4"])
def test_patterns_within_the_narrowest_width_still_prune(spec):
    model = tiny_vit()  # 1:32: one group of 32 per row of q/k/v/o and fc1, the narrowest inputs
    report = snows_hf.prune_(model, {"sparsity": spec, "method": "magnitude", "batch_size": 4}, torch.randn(4, 3, 32, 32))
    assert all(layer.sparsity < 1 for layer in report.layers)


@pytest.mark.parametrize("spec", ["1:100", "0.999999"])
def test_cli_refuses_patterns_that_zero_a_layer(spec, vit_dir, tmp_path, capsys):
    before = _listing(tmp_path)
    argv = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", spec, "--method", "magnitude", "--no-eval",
            "--output-dir", "out", "--quiet"]
    assert main(argv) == 1
    line = _one_error_line(capsys)
    assert ("groups 100 inputs" in line or "would zero" in line) and "vit.layers.0.attention.q_proj" in line, line
    assert _listing(tmp_path) == before
