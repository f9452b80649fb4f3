"""Compact checkpoints: from_pretrained reads them back bit for bit, and refuses bad ones."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_llama, tiny_vit
from safetensors.torch import load_file, save_file

import snows_hf
from snows_hf.cli import main
from snows_hf.export import save_pruned
from snows_hf.workflow import convert


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64)).eval()


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[16, 24], depths=[1, 1], num_labels=3)).eval()


CASES = {  # factory, inputs, config, Auto class name
    "llama-2:4": (tiny_llama, lambda: torch.randint(4, VOCAB, (8, 12)), {"sparsity": "2:4"}, "AutoModelForCausalLM"),
    "vit-60%": (tiny_vit, lambda: torch.randn(8, 3, 32, 32), {"sparsity": "0.6"}, "AutoModelForImageClassification"),
    "gpt2-conv1d-1:4": (_gpt2, lambda: torch.randint(4, VOCAB, (8, 12)), {"sparsity": "1:4"}, "AutoModelForCausalLM"),
    "resnet-conv2d-2:4": (_resnet, lambda: torch.randn(8, 3, 32, 32), {"sparsity": "2:4"}, "AutoModelForImageClassification"),
    "llama-global": (tiny_llama, lambda: torch.randint(4, VOCAB, (8, 12)),
                     {"sparsity": "0.5", "allocation": "global", "max_layer_sparsity": 0.8}, "AutoModelForCausalLM"),
}


def _pruned(case):
    factory, inputs, config, auto = CASES[case]
    model = factory()
    report = snows_hf.prune_(model, {"method": "mask-only", "mask": "magnitude", "diagnostics": False, "batch_size": 4} | config, inputs())
    return model, report, auto


@pytest.mark.parametrize("case", sorted(CASES))
def test_compact_round_trip_is_bit_identical_and_smaller(case, tmp_path):
    import transformers

    model, report, auto = _pruned(case)
    save_pruned(model, report, tmp_path / "dense")
    save_pruned(model, report, tmp_path / "compact", save_format="compact")
    loaded = getattr(transformers, auto).from_pretrained(tmp_path / "compact")
    assert type(loaded) is type(model) and not getattr(loaded, "is_quantized", False)
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert json.loads((tmp_path / "compact" / "config.json").read_text())["sparsity"]["format"] == "compact"
    size = {f: (tmp_path / f / "model.safetensors").stat().st_size for f in ("dense", "compact")}
    assert size["compact"] < size["dense"]


def test_sharded_compact_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    from snows_hf.compact_format import write_compact

    model, report, _ = _pruned("llama-2:4")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    write_compact(tmp_path, model, report)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_import_snows_hf_is_all_from_pretrained_needs(tmp_path):
    model, report, _ = _pruned("llama-2:4")
    save_pruned(model, report, tmp_path / "compact", save_format="compact")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "expected.pt")
    code = (
        "import importlib.util, sys, torch, snows_hf\n"
        "importlib.util.find_spec('transformers.modeling_utils')  # a mere probe must not use up the hook\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'compact')!r})\n"
        f"e = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "sys.exit(0 if all(torch.equal(v, e[k]) for k, v in m.state_dict().items()) else 3)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_import_snows_hf_imports_no_torch_and_installs_one_hook():
    """The hook that registers the compact format costs no import: transformers and torch
    load only when the caller's code loads them; importing again adds no second hook."""
    code = ("import importlib, sys, snows_hf, snows_hf.compact_hook as hook\n"
            "importlib.reload(snows_hf)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules),"
            " sum(isinstance(f, hook.WhenLoaded) for f in sys.meta_path))\n")
    root = str(Path(snows_hf.__file__).parents[1])  # this checkout's package, whatever is installed
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=root))
    assert result.stdout.split("\n")[0] == "[] 1", result.stderr[-2000:]


@pytest.mark.parametrize("damage, message", [
    ("remove-code", "model.layers.0.mlp.up_proj.weight_code is missing"),
    ("rename-values", "model.layers.0.mlp.up_proj.weight is missing"),
    ("truncate-values", "model.layers.0.mlp.up_proj.weight holds 1151 entries, 2:4 keeps 1152"),
    ("truncate-code", "model.layers.0.mlp.up_proj.weight_code does not unpack: expected"),
    ("remove-both", "model.layers.0.mlp.up_proj: no compact tensors in the checkpoint"),
])
def test_damaged_compact_tensors_fail_by_name(damage, message, tmp_path):
    from transformers import AutoModelForCausalLM

    model, report, _ = _pruned("llama-2:4")
    save_pruned(model, report, tmp_path / "c", save_format="compact")
    path = tmp_path / "c" / "model.safetensors"
    tensors = load_file(path)
    key = "model.layers.0.mlp.up_proj.weight"
    if damage == "remove-code":
        del tensors[key + "_code"]
    elif damage == "rename-values":
        tensors[key + "_valuez"] = tensors.pop(key)  # the kept values are stored under the weight's own name
    elif damage == "truncate-values":
        tensors[key] = tensors[key][:-1].clone()
    elif damage == "truncate-code":
        tensors[key + "_code"] = tensors[key + "_code"][:-1].clone()
    else:
        del tensors[key + "_code"], tensors[key]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="cannot load the compact checkpoint: .*" + message.replace("(", r"\(")):
        AutoModelForCausalLM.from_pretrained(tmp_path / "c")


def test_a_run_saves_the_compact_format(vit_dir):
    from transformers import AutoModelForImageClassification

    snows_hf.run(vit_dir, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, "random", save_format="compact", output_dir="out",
                 progress=False)
    keys = load_file("out/model.safetensors")
    assert any(k.endswith("weight_code") for k in keys) and keys["vit.encoder.layer.0.attention.attention.query.weight"].dim() == 1
    model = AutoModelForImageClassification.from_pretrained("out")
    weight = model.vit.layers[0].attention.q_proj.weight
    assert ((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) == 2).all()
    shutil.rmtree("out")


def test_convert_both_ways_keeps_weights_card_and_recipe(vit_dir):
    from transformers import AutoModelForImageClassification

    snows_hf.run(vit_dir, {"sparsity": "0.5", "method": "mask-only", "mask": "magnitude"}, "random", output_dir="dense", progress=False)
    convert("dense", "compact")
    convert("dense-compact", "dense", "back")
    models = {d: AutoModelForImageClassification.from_pretrained(d) for d in ("dense", "dense-compact", "back")}
    reference = models["dense"].state_dict()
    for name in ("dense-compact", "back"):
        assert all(torch.equal(v, reference[k]) for k, v in models[name].state_dict().items()), name
    assert load_file("back/model.safetensors").keys() == load_file("dense/model.safetensors").keys()
    assert Path("dense-compact/recipe.yaml").read_text() == Path("dense/recipe.yaml").read_text()
    assert "compact format" in Path("dense-compact/README.md").read_text()
    assert "compact format" not in Path("back/README.md").read_text() and Path("back/sparsity_per_layer.png").is_file()
    report = json.loads(Path("back/report.json").read_text())
    assert report["source_model"] == str(vit_dir) and len(report["layers"]) == 12


def test_convert_refuses_non_snows_folders(vit_dir, capsys):
    assert main(["convert", str(vit_dir), "--to", "compact", "--output-dir", "x"]) == 1
    assert "not a snows-hf output folder" in capsys.readouterr().err
    assert not Path("x").exists()


def _bert_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=VOCAB, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config).eval()


def _tokens():
    return torch.randint(4, VOCAB, (8, 12))


HEADS = {  # pruned model, its calibration inputs, the Auto class of another head of the same model
    "bert-base-into-classifier": (tiny_bert, _tokens, "AutoModelForSequenceClassification"),
    "bert-classifier-into-base": (_bert_classifier, _tokens, "AutoModel"),
    "vit-classifier-into-base": (tiny_vit, lambda: torch.randn(8, 3, 32, 32), "AutoModel"),
    "llama-causal-into-base": (tiny_llama, _tokens, "AutoModel"),
    "llama-base-into-causal": (lambda: tiny_llama().model, _tokens, "AutoModelForCausalLM"),
}


@pytest.mark.parametrize("case", sorted(HEADS))
def test_compact_loads_into_another_head_class_as_dense_does(case, tmp_path):
    """Layer names go through base_model_prefix both ways, as transformers maps dense
    checkpoints: the pruned weights land bit for bit, and the head's weights are
    initialised (missing) or dropped (unexpected) and reported exactly as for dense."""
    import transformers

    factory, inputs, auto = HEADS[case]
    model = factory()
    report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "diagnostics": False, "batch_size": 4},
                             inputs())
    loaded, info = {}, {}
    for fmt in ("dense", "compact"):
        save_pruned(model, report, tmp_path / fmt, save_format=fmt)
        torch.manual_seed(1)  # the head's missing weights: initialised alike for both
        loaded[fmt], info[fmt] = getattr(transformers, auto).from_pretrained(tmp_path / fmt, output_loading_info=True)
    assert type(loaded["compact"]) is type(loaded["dense"]) is not type(model)
    assert not getattr(loaded["compact"], "is_quantized", False)
    assert info["compact"] == info["dense"]
    dense, compact = loaded["dense"].state_dict(), loaded["compact"].state_dict()
    assert dense.keys() == compact.keys()
    for key in dense:
        assert torch.equal(compact[key], dense[key]), key
    # every pruned layer reached the other class, still pruned
    prefix = loaded["compact"].base_model_prefix
    own = dict(loaded["compact"].named_modules())
    for layer in report.layers:
        name = layer.name if layer.name in own else (layer.name.removeprefix(prefix + ".") if layer.name.startswith(prefix + ".")
                                                      else f"{prefix}.{layer.name}")
        assert torch.equal(own[name].weight, model.get_submodule(layer.name).weight), layer.name


def _with_zero_layer(folder: Path, factory=tiny_llama) -> Path:
    """A model folder whose targeted ``up_proj`` of block 0 is all zero, and one row of
    block 1's ``q_proj``: layers a run prunes to 100% and rows with nothing kept."""
    from conftest import tiny_tokenizer

    model = factory()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.zero_()
        model.model.layers[1].self_attn.q_proj.weight[3].zero_()
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("config", [
    {"sparsity": "0.5"},
    {"sparsity": "0.5", "allocation": "global", "max_layer_sparsity": 0.8},
    {"sparsity": "2:4"},
], ids=["unstructured", "global", "2:4"])
def test_an_all_zero_layer_saves_compact_and_converts_bit_for_bit(config, tmp_path):
    from transformers import AutoModelForCausalLM

    source = _with_zero_layer(tmp_path / "zeros")
    settings = {"method": "mask-only", "mask": "magnitude"} | config
    snows_hf.run(source, settings, "random", save_format="compact", output_dir="compact", progress=False)
    snows_hf.run(source, settings, "random", output_dir="dense", progress=False)
    report = json.loads(Path("compact/report.json").read_text())
    assert {layer["name"]: layer["sparsity"] for layer in report["layers"]}["model.layers.0.mlp.up_proj"] == 1.0
    convert("dense", "compact", "converted")
    convert("compact", "dense", "back")
    reference = AutoModelForCausalLM.from_pretrained("dense").state_dict()
    assert not reference["model.layers.0.mlp.up_proj.weight"].any()
    for folder in ("compact", "converted", "back"):
        loaded = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(v, reference[k]) for k, v in loaded.items()), folder
    assert load_file("back/model.safetensors").keys() == load_file("dense/model.safetensors").keys()


def test_compact_layer_patterns_cover_every_share_of_zeros():
    from snows_hf.compact_format import check_layers

    entry = {"key": "fc.weight", "layout": "linear", "shape": [8, 4]}
    for pattern in ("0", "1", "0.5", "2:4", "8:16"):
        assert check_layers({"fc": entry | {"pattern": pattern}}, {"fc.weight": (8, 4)}) == [], pattern
    for pattern in ("1.5", "-0.1", "nan", "inf", "2:2", "x"):
        problems = check_layers({"fc": entry | {"pattern": pattern}}, {"fc.weight": (8, 4)})
        assert len(problems) == 1 and problems[0].startswith("quantization_config.layers['fc'].pattern: "), pattern
