"""Hostile inputs (issue 20): crafted compact checkpoints, compact models loaded without
snows-hf, and patterns that would zero whole layers. Each refusal is one line, with
nothing written or lost, and a crafted checkpoint is refused before it can exhaust memory."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, patch_everywhere, tiny_llama, tiny_vit
from safetensors.torch import load_file, save_file

import snows_hf
from snows_hf.cli import main
from snows_hf.export import save_pruned

LAYER = "model.layers.0.mlp.up_proj"  # 72 x 32, pruned 2:4
KEY = f"{LAYER}.weight"
WHERE = re.escape(f"quantization_config.layers['{LAYER}']")


def _pruned(model, spec: str, folder: Path, save_format: str = "dense", processor=None) -> Path:
    """``model`` pruned by magnitude to ``spec`` on random tokens, saved to ``folder``."""
    report = snows_hf.prune_(model, {"sparsity": spec, "method": "mask-only", "mask": "magnitude", "diagnostics": False, "batch_size": 4},
                             torch.randint(4, VOCAB, (8, 12)))
    return save_pruned(model, report, folder, processor, save_format=save_format)


@pytest.fixture(scope="module")
def compact_source(tmp_path_factory):
    """A tiny Llama pruned 2:4 and saved compact, and its weights; tests copy the folder."""
    model = tiny_llama()
    folder = _pruned(model, "2:4", tmp_path_factory.mktemp("compact") / "llama-2of4", "compact")
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
    "pattern-not-string": (("config", _layer("pattern", 0.5)), WHERE + r"\.pattern: 0\.5 is not a sparsity string such as '2:4'"),
    "pattern-invalid": (("config", _layer("pattern", "4:2")), WHERE + r"\.pattern: '4:2' is not a sparsity string"),
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

    patch_everywhere(monkeypatch, snows_hf.loading, "load_model", no_load)
    before = _listing(tmp_path)
    argv = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:32", "--method", "mask-only", "--mask", "magnitude",
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
        snows_hf.prune_(model, {"sparsity": spec, "method": "mask-only", "mask": "magnitude", "batch_size": 4}, inputs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("spec", ["1:32", "2:4"])
def test_patterns_within_the_narrowest_width_still_prune(spec):
    model = tiny_vit()  # 1:32: one group of 32 per row of q/k/v/o and fc1, the narrowest inputs
    report = snows_hf.prune_(model, {"sparsity": spec, "method": "mask-only", "mask": "magnitude", "batch_size": 4}, torch.randn(4, 3, 32, 32))
    assert all(layer.sparsity < 1 for layer in report.layers)


@pytest.mark.parametrize("spec", ["1:100", "0.999999"])
def test_cli_refuses_patterns_that_zero_a_layer(spec, vit_dir, tmp_path, capsys):
    before = _listing(tmp_path)
    argv = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", spec, "--method", "mask-only", "--mask", "magnitude", "--no-eval",
            "--output-dir", "out", "--quiet"]
    assert main(argv) == 1
    line = _one_error_line(capsys)
    assert ("groups 100 inputs" in line or "would zero" in line) and "vit.layers.0.attention.q_proj" in line, line
    assert _listing(tmp_path) == before


# --- issue 30: another head class, all-zero layers, claims checked against weights, bounded lines

def _digests(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its bytes: what a refused command leaves alone."""
    return {str(p.relative_to(root)): p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _refused_by_cli(argv, root: Path, capsys) -> str:
    """Run ``argv``: exit 1, one ``snows-hf: error:`` line and nothing else on stderr, no
    traceback, ``root`` unchanged. Returns the line."""
    before = _digests(root)
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snows-hf: error: "), captured.err[-3000:]
    assert "Traceback" not in captured.err + captured.out
    assert _digests(root) == before
    return lines[0]


@pytest.fixture(scope="module")
def bert_compact(tmp_path_factory):
    """A tiny BertModel pruned 2:4, saved compact: the checkpoint of a base model."""
    from conftest import tiny_bert

    return _pruned(tiny_bert(), "2:4", tmp_path_factory.mktemp("bert") / "bert-2of4", "compact")


BERT_LAYER = "encoder.layer.0.attention.self.query"


def _as_classifier(folder: Path) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    path.write_text(json.dumps(config))


HEADS = {  # a base model's compact checkpoint, changed, loaded into a classifier: still refused by name
    "pruned-layer-missing": (lambda t: [t.pop(f"{BERT_LAYER}.weight"), t.pop(f"{BERT_LAYER}.weight_code")], None,
                             re.escape(f"bert.{BERT_LAYER}: no compact tensors in the checkpoint")),
    "pruned-code-missing": (lambda t: t.pop(f"{BERT_LAYER}.weight_code"), None,
                            re.escape(f"{BERT_LAYER}.weight_code is missing")),
    "declared-with-and-without-prefix": (None, lambda qc: qc["layers"].update({f"bert.{BERT_LAYER}": qc["layers"][BERT_LAYER]}),
                                         re.escape(f"quantization_config.layers['bert.{BERT_LAYER}']: the model's "
                                                   f"bert.{BERT_LAYER} is declared again")),
}


def _head_case(case: str, source: Path, to: Path) -> Path:
    tensors, config, _ = HEADS[case]
    folder = _copy(source, to)
    if tensors:
        _edit_tensors(folder, tensors)
    if config:
        _edit_config(folder, config)
    return folder


@pytest.mark.parametrize("case", sorted(HEADS))
def test_a_damaged_base_checkpoint_is_refused_by_another_head_class(case, bert_compact, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    folder = _head_case(case, bert_compact, tmp_path / "crafted")
    with pytest.raises(ValueError) as raised:
        AutoModelForSequenceClassification.from_pretrained(folder)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("cannot load the compact checkpoint: "), message
    assert re.search(HEADS[case][2], message), message
    _as_classifier(folder)  # the CLI loads the class config.json names
    line = _refused_by_cli(["inspect", str(folder), "--quiet"], tmp_path, capsys)
    assert re.search(HEADS[case][2], line), line


@pytest.mark.parametrize("command", ["prune", "convert"])
@pytest.mark.parametrize("config", [{"sparsity": "0.5"}, {"sparsity": "0.5", "allocation": "global",
                                                          "max_layer_sparsity": 0.8}], ids=["uniform", "global"])
def test_an_all_zero_layer_saves_compact_from_the_cli(command, config, tmp_path, capsys):
    """The save after a run and convert: a layer pruned to 100% is stored, not refused."""
    from conftest import tiny_tokenizer

    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.zero_()
    model.save_pretrained("zeros")
    tiny_tokenizer().save_pretrained("zeros")
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in config.items()]
    run = ["prune", "zeros", "--method", "mask-only", "--mask", "magnitude", "--dataset", "random", "--num-samples", "4", "--no-eval", "--quiet",
           *flags]
    if command == "prune":
        assert main([*run, "--save-format", "compact", "--output-dir", "out"]) == 0, capsys.readouterr().err
    else:
        assert main([*run, "--output-dir", "dense"]) == 0
        assert main(["convert", "dense", "--to", "compact", "--output-dir", "out", "--quiet"]) == 0, capsys.readouterr().err
    layers = json.loads(Path("out/config.json").read_text())["quantization_config"]["layers"]
    assert layers["model.layers.0.mlp.up_proj"]["pattern"] == "1"
    assert main(["inspect", "out"]) == 0


@pytest.fixture(scope="module")
def pruned_dense(tmp_path_factory):
    """Dense snows-hf outputs of a tiny Llama pruned 2:4 and 50%, and the unpruned weights."""
    from conftest import tiny_tokenizer

    root = tmp_path_factory.mktemp("pruned")
    model = tiny_llama()
    model.save_pretrained(root / "plain")
    tiny_tokenizer().save_pretrained(root / "plain")
    for spec in ("2:4", "0.5"):
        _pruned(tiny_llama(), spec, root / spec.replace(":", "of"), processor=tiny_tokenizer())
    return root


def _unpruned(only: str | None = None):
    """A change that puts the unpruned weights (all, or only layer ``only``) back into a pruned folder."""
    def change(folder: Path, root: Path) -> None:
        plain = load_file(root / "plain" / "model.safetensors")
        _edit_tensors(folder, lambda t: t.update({k: v for k, v in plain.items() if only is None or k == f"{only}.weight"}))

    return change


def _report(edit):
    """A change of a pruned folder's report.json."""
    def change(folder: Path, root: Path) -> None:
        report = json.loads((folder / "report.json").read_text())
        edit(report)
        (folder / "report.json").write_text(json.dumps(report))

    return change


CONVERTED = {  # pruned folder, its change (weights never pruned, a crafted report), the error (strings clipped)
    "never-pruned-2:4-all": ("2of4", _unpruned(), r"14 pruned layers do not hold what the report records .*: "
                             r"model\.layers\.0\.self_attn\.q_proj: not 2:4 .*; and 11 more$"),
    "never-pruned-2:4-one": ("2of4", _unpruned("model.layers.1.mlp.down_proj"), r"1 pruned layer does not hold what the "
                             r"report records \(not the pruned weights, or changed since\): model\.layers\.1\.mlp\.down_proj: "
                             r"not 2:4 \(a group of 4 inputs keeps 4 non-zeros\)$"),
    "never-pruned-50%-one": ("0.5", _unpruned("model.layers.0.mlp.up_proj"), r"model\.layers\.0\.mlp\.up_proj: 0 of 2304 "
                             r"weights are zero, the report records 50% \(1152\)$"),
    "sparsity-wider-than-any-layer": ("2of4", _report(lambda r: r["config"].update(sparsity="2:" + "9" * 4000)),
                                      r"14 pruned layers do not hold .*: model\.layers\.0\.self_attn\.q_proj: not "
                                      r"2:999+\.\.\.999+ \(32 inputs, fewer than a group\)"),
    "sparsity-not-a-sparsity": ("0.5", _report(lambda r: r["config"].update(sparsity="x" * 100_000)),
                                r"the report's sparsity 'xxx+\.\.\.xxx+' is not a sparsity string such as '2:4' or '0\.5'$"),
    "layer-share-nan": ("0.5", _report(lambda r: r["layers"][0].update(sparsity=float("nan"))),
                        r"model\.layers\.0\.self_attn\.q_proj: the report records a share of zeros of nan$"),
    "layer-not-in-model": ("0.5", _report(lambda r: r["layers"][0].update(name="model." + "x" * 100_000)),
                           r"1 pruned layer does not hold .*: model\.xxx+\.\.\.xxx+: the model has no such module$"),
}


@pytest.mark.parametrize("to", ["compact", "dense"])
@pytest.mark.parametrize("case", sorted(CONVERTED))
def test_convert_refuses_what_the_report_does_not_hold_naming_the_layer(case, to, pruned_dense, tmp_path, capsys):
    """Either way, convert rewrites pruned weights only: weights never pruned and crafted
    reports are one bounded line, each layer named."""
    pruned, change, message = CONVERTED[case]
    folder = _copy(pruned_dense / pruned, tmp_path / "out")
    change(folder, pruned_dense)
    line = _refused_by_cli(["convert", str(folder), "--to", to, "--output-dir", str(tmp_path / "new"), "--quiet"],
                           tmp_path, capsys)
    assert len(line) < LINE_LIMIT and re.search(message, line), line[:3000]


def _with_block(folder: Path, block) -> Path:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if block is _DELETE:
        del config["sparsity"]
    elif callable(block):
        block(config["sparsity"])
    else:
        config["sparsity"] = block
    path.write_text(json.dumps(config))
    return folder


UP = "model.layers.0.mlp.up_proj"

# a config.json sparsity block that is malformed: one error line naming every bad field
MALFORMED = {  # folder ("plain" or a pruned one), block (or an edit of the pruned one's), the error
    "not-a-mapping": ("plain", "2:4", r"sparsity: '2:4' is not a mapping$"),
    "pattern-missing": ("2of4", lambda b: b.pop("pattern"), r"sparsity\.pattern is missing$"),
    "pattern-number": ("2of4", lambda b: b.update(pattern=5), r"sparsity\.pattern: 5 is not a sparsity string such as '2:4' or '0\.5'$"),
    "pattern-invalid": ("2of4", lambda b: b.update(pattern="4:2"), r"sparsity\.pattern: '4:2' is not a sparsity string such as"),
    "layers-missing": ("2of4", lambda b: b.pop("layers"), r"sparsity\.layers is missing$"),
    "layers-list": ("2of4", lambda b: b.update(layers=[UP]),
                    r"sparsity\.layers must map layer names to their shares of zeros, not be a list$"),
    "layers-empty": ("plain", {"pattern": "2:4", "layers": {}}, r"sparsity\.layers lists no layer$"),
    "layer-not-in-model": ("2of4", lambda b: b["layers"].update({"model.nope": 0.5}),
                           r"sparsity\.layers\['model\.nope'\]: the model has no module model\.nope$"),
    "layer-without-weight": ("2of4", lambda b: b["layers"].update({"model.layers.0": 0.5}),
                             r"sparsity\.layers\['model\.layers\.0'\]: LlamaDecoderLayer has no Linear, Conv1D or Conv2d "
                             r"weight to prune$"),
    "layer-norm": ("2of4", lambda b: b["layers"].update({"model.layers.0.input_layernorm": 0.5}),
                   r"sparsity\.layers\['model\.layers\.0\.input_layernorm'\]: LlamaRMSNorm has no Linear"),
    "share-string": ("2of4", lambda b: b["layers"].update({UP: "x"}),
                     r"sparsity\.layers\['model\.layers\.0\.mlp\.up_proj'\]: 'x' is not a share of zeros from 0 to 1$"),
    "share-above-one": ("2of4", lambda b: b["layers"].update({UP: 1.5}), r"\]: 1\.5 is not a share of zeros from 0 to 1$"),
    "share-bool": ("2of4", lambda b: b["layers"].update({UP: True}), r"\]: True is not a share of zeros from 0 to 1$"),
    "share-nan": ("2of4", lambda b: b["layers"].update({UP: float("nan")}), r"\]: nan is not a share of zeros"),
    "overall-string": ("2of4", lambda b: b.update(overall="half"), r"sparsity\.overall: 'half' is not a share of zeros"),
    "allocation-unknown": ("0.5", lambda b: b.update(allocation="local"),
                           r"sparsity\.allocation: 'local' is not uniform or global$"),
    "several-fields": ("2of4", lambda b: b.update(pattern=None, layers={UP: -1, "model.nope": 0.5}),
                       r"sparsity\.pattern: None is not a sparsity string .*; sparsity\.layers\['model\.layers\.0\.mlp\.up_proj'\]: "
                       r"-1 is not a share .*; sparsity\.layers\['model\.nope'\]: the model has no module"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_sparsity_block_names_every_bad_field(case, pruned_dense, tmp_path, capsys):
    source, block, message = MALFORMED[case]
    folder = _with_block(_copy(pruned_dense / source, tmp_path / "out"), block)
    line = _refused_by_cli(["inspect", str(folder)], tmp_path, capsys)
    assert line.startswith("snows-hf: error: cannot check ") and re.search(message, line), line


# claims the weights do not bear out: the folder is invalid (exit 1), the layer or figure named
CLAIMS = {  # folder, block (or an edit), what the output must say
    "dense-listing-one-2:4-layer": ("plain", {"pattern": "2:4", "layers": {UP: 0.5}}, [f"{UP} ", " NO"]),
    "dense-listing-a-layer-at-0": ("plain", {"pattern": "0.5", "layers": {UP: 0.0}}, [f"{UP} ", " NO"]),
    "dense-listing-a-layer-at-0-global": ("plain", {"pattern": "0.5", "allocation": "global", "layers": {UP: 0.0}},
                                          ["0.00% of their weights are zero, not the 50% pattern claims"]),
    "2:4-layer-claims-90%": ("2of4", lambda b: b["layers"].update({UP: 0.9}), [f"{UP} ", " NO", "1 break their pattern"]),
    "overall-claims-90%": ("0.5", lambda b: b.update(overall=0.9),
                           ["50.00% of their weights are zero, not the 90% overall claims"]),
}


@pytest.mark.parametrize("case", sorted(CLAIMS))
def test_claims_the_weights_do_not_bear_out_are_invalid(case, pruned_dense, tmp_path, capsys):
    source, block, expected = CLAIMS[case]
    folder = _with_block(_copy(pruned_dense / source, tmp_path / "out"), block)
    before = _digests(tmp_path)
    assert main(["inspect", str(folder), "--json", str(tmp_path / "found.json")]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "snows-hf: error" not in captured.err, captured.err
    for text in expected:
        assert text in captured.out, captured.out
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["valid"] is False
    (tmp_path / "found.json").unlink()
    assert _digests(tmp_path) == before


# strings from files go into messages bounded: no line of hundreds of KB
BIG = "x" * 400_000
LONG = {  # ("config", edit of quantization_config) or ("block", edit of the sparsity block), what the line still says
    "layer-name": ("config", lambda qc: qc["layers"].update({BIG: dict(qc["layers"][LAYER])}),
                   r"quantization_config\.layers\['xxxx+\.\.\.xxxx+'\]: the model has no parameter xxx+\.\.\.xxx+\.weight"),
    "key": ("config", _layer("key", [BIG]), r"\.key: \['xxx+\.\.\.xxx+'\] is not a tensor name"),
    "pattern": ("config", _layer("pattern", "2:4" * 200_000), r"\.pattern: '2:42:4.*\.\.\..*2:4' is not a sparsity string"),
    "layout": ("config", _layer("layout", BIG), r"\.layout: 'xxx+\.\.\.xxx+' is not one of linear, conv1d, conv2d"),
    "shape": ("config", _layer("shape", [1] * 300_000), r"\.shape: \[1, 1, .*\.\.\..*, 1\] is not the shape"),
    "format-version": ("config", lambda qc: qc.update(format_version=BIG), r"format_version 'xxx+\.\.\.xxx+' is not 2"),
    "many-layers": ("config", lambda qc: qc["layers"].update({f"model.nope{i}": dict(qc["layers"][LAYER])
                                                             for i in range(20_000)}),
                    r"\]: the model has no parameter model\.nope0\.weight; .*; and 19997 more$"),
    "block-pattern": ("block", lambda b: b.update(pattern="2:4" * 200_000), r"sparsity\.pattern: '2:42:4.*\.\.\..*2:4' is not a sparsity string"),
    "block-layer-name": ("block", lambda b: b["layers"].update({BIG: 0.5}), r"sparsity\.layers\['xxx+\.\.\.xxx+'\]: the"),
    "block-share": ("block", lambda b: b["layers"].update({LAYER: BIG}), r"\]: 'xxx+\.\.\.xxx+' is not a share"),
    "block-many-layers": ("block", lambda b: b["layers"].update({f"model.nope{i}": 0.5 for i in range(20_000)}),
                          r"sparsity\.layers\['model\.nope0'\]: the model has no module model\.nope0; .*; and 19997 more$"),
}
LINE_LIMIT = 2000  #: characters: a message quotes what a file holds, bounded


@pytest.mark.parametrize("case", sorted(LONG))
def test_strings_from_compact_metadata_reach_messages_bounded(case, compact_source, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    kind, edit, message = LONG[case]
    folder = _copy(compact_source[0], tmp_path / "crafted")
    if kind == "config":
        _edit_config(folder, edit)
        with pytest.raises(ValueError) as raised:
            AutoModelForCausalLM.from_pretrained(folder)
        assert len(str(raised.value)) < LINE_LIMIT and re.search(message, str(raised.value)), str(raised.value)[:3000]
    else:
        _with_block(folder, edit)
    line = _refused_by_cli(["inspect", str(folder)], tmp_path, capsys)
    assert len(line) < LINE_LIMIT and re.search(message, line), line[:3000]


def test_inspect_output_quotes_the_block_bounded(compact_source, tmp_path, capsys):
    """What inspect prints of a block it could check (tool, method, pattern) is bounded too."""
    folder = _with_block(_copy(compact_source[0], tmp_path / "out"), lambda b: b.update(tool=BIG, method=BIG))
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "written by xxx" in out and max(map(len, out.splitlines())) <= 200
    _with_block(folder, lambda b: b.update(pattern="2:" + "9" * 4000))  # a legal N:M no layer can follow
    assert main(["inspect", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "14 break their pattern" in out and max(map(len, out.splitlines())) <= 200


def test_inspect_maps_listed_layers_through_the_prefix(bert_compact, tmp_path, capsys):
    """A base model's folder inspected as a classifier: its listed layers are the
    classifier's ``bert.`` ones, checked like any other."""
    folder = _copy(bert_compact, tmp_path / "out")
    _as_classifier(folder)
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "12 layers, 50.00% of their weights are zero; every layer follows its pattern" in out, out
    assert f"bert.{BERT_LAYER} " in out
