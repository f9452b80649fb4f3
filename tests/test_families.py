"""Every supported architecture family, on a tiny random model built from its config:
prune with SNOWS (K=2), save, reload with the matching Auto class, and check the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import transformers as T

import snows_hf
from snows_hf.adapters import ADAPTERS, find_block_list
from snows_hf.export import save_pruned
from snows_hf.fields import SettingError
from snows_hf.masks import parse_sparsity, satisfies, to_rows
from snows_hf.sparse_inference import sparse_inference_

from conftest import cpu_kernel_backend

VOCAB = 128
HIDDEN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
DECODER = dict(HIDDEN, num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


@dataclass
class Family:
    build: Callable[[], T.PreTrainedModel]
    auto: type
    inputs: str  # "image" or "text"
    blocks: str  # expected block path
    layouts: frozenset[str] = frozenset({"linear"})


FAMILIES = {
    "vit": Family(lambda: T.ViTForImageClassification(T.ViTConfig(**HIDDEN, image_size=32, patch_size=8, num_labels=3)),
                  T.AutoModelForImageClassification, "image", "vit.layers"),
    "deit": Family(lambda: T.DeiTForImageClassification(T.DeiTConfig(**HIDDEN, image_size=32, patch_size=8, num_labels=3)),
                   T.AutoModelForImageClassification, "image", "deit.layers"),
    "swin": Family(lambda: T.SwinForImageClassification(T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=3)),
        T.AutoModelForImageClassification, "image", "swin.encoder.layers"),
    "convnext": Family(lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
        num_stages=2, hidden_sizes=[16, 32], depths=[2, 2], num_labels=3, layer_scale_init_value=1.0)),
        T.AutoModelForImageClassification, "image", "convnext.encoder.stages"),
    "resnet": Family(lambda: T.ResNetForImageClassification(T.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[2, 2], num_labels=3)),
        T.AutoModelForImageClassification, "image", "resnet.encoder.stages.*.layers", frozenset({"conv2d"})),
    "bert": Family(lambda: T.BertForSequenceClassification(T.BertConfig(**HIDDEN, vocab_size=VOCAB, num_labels=3)),
                   T.AutoModelForSequenceClassification, "text", "bert.encoder.layer"),
    "bert-bare": Family(lambda: T.BertModel(T.BertConfig(**HIDDEN, vocab_size=VOCAB)), T.AutoModel, "text", "encoder.layer"),
    "roberta": Family(lambda: T.RobertaForSequenceClassification(T.RobertaConfig(
        **HIDDEN, vocab_size=VOCAB, num_labels=3, pad_token_id=1, max_position_embeddings=64)),
        T.AutoModelForSequenceClassification, "text", "roberta.encoder.layer"),
    "distilbert": Family(lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=VOCAB, num_labels=3, max_position_embeddings=64)),
        T.AutoModelForSequenceClassification, "text", "distilbert.transformer.layer"),
    "gpt2": Family(lambda: T.GPT2LMHeadModel(T.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2)),
        T.AutoModelForCausalLM, "text", "transformer.h", frozenset({"conv1d"})),
    "opt": Family(lambda: T.OPTForCausalLM(T.OPTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, vocab_size=VOCAB, word_embed_proj_dim=32,
        max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=2)),
        T.AutoModelForCausalLM, "text", "model.decoder.layers"),
    "llama": Family(lambda: T.LlamaForCausalLM(T.LlamaConfig(**DECODER, tie_word_embeddings=True)),
                    T.AutoModelForCausalLM, "text", "model.layers"),
    "mistral": Family(lambda: T.MistralForCausalLM(T.MistralConfig(**DECODER)), T.AutoModelForCausalLM, "text", "model.layers"),
    "qwen2": Family(lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**DECODER)), T.AutoModelForCausalLM, "text", "model.layers"),
    "qwen3": Family(lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**DECODER, head_dim=8)), T.AutoModelForCausalLM, "text", "model.layers"),
    # no adapter entry: found by the generic fallback (the longest list of identical blocks)
    "electra (fallback)": Family(lambda: T.ElectraForSequenceClassification(T.ElectraConfig(
        embedding_size=32, **HIDDEN, vocab_size=VOCAB, num_labels=3, max_position_embeddings=64)),
        T.AutoModelForSequenceClassification, "text", "electra.encoder.layer"),
}
CASES = [(name, "2:4") for name in FAMILIES] + [("llama", "50%")]


def _build(name: str):
    torch.manual_seed(0)
    return FAMILIES[name].build().eval()


def _inputs(family: Family, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    if family.inputs == "image":
        return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g)}
    ids = torch.randint(4, VOCAB, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0  # one padded sample: attention masks must reach the blocks
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def _final(model, inputs) -> torch.Tensor:
    """The last block's output: on random tiny heads with three labels, logits are too
    few numbers to compare methods by."""
    return model(**inputs, output_hidden_states=True).hidden_states[-1]


def _prune(name, spec, method, calib, **settings):
    model = _build(name)
    config = {"sparsity": spec, "method": method, "batch_size": 4, **settings} | ({"k_step": 2} if method == "snows" else {})
    return model, snows_hf.prune_(model, config, calib)


@pytest.mark.parametrize("name, spec", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_family_prune_save_reload(name, spec, tmp_path):
    family = FAMILIES[name]
    calib, probe = _inputs(family, 16, 0), _inputs(family, 8, 1)
    dense = _build(name)
    assert find_block_list(dense).path == family.blocks
    if "fallback" in name:
        assert dense.config.model_type not in ADAPTERS
    reference = _final(dense, probe)

    masked, _ = _prune(name, spec, "mask-only", calib)
    model, report = _prune(name, spec, "snows", calib)
    err_mask = float((_final(masked, probe) - reference).norm() / reference.norm())
    err_snows = float((_final(model, probe) - reference).norm() / reference.norm())
    assert err_snows < err_mask, (err_snows, err_mask)

    save_pruned(model, report, tmp_path / "out")
    loaded = family.auto.from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is type(model)
    pattern = parse_sparsity(spec)
    targeted = {layer.name for layer in report.layers}
    assert {layer.layout for layer in report.layers} == set(family.layouts)
    assert len(targeted) >= 4
    dense_state, loaded_state = dense.state_dict(), loaded.state_dict()
    assert dense_state.keys() == loaded_state.keys()
    for key, value in loaded_state.items():
        module_name = key.rsplit(".", 1)[0]
        if module_name in targeted and key.endswith(".weight"):
            layout = next(layer.layout for layer in report.layers if layer.name == module_name)
            assert satisfies(to_rows(value, layout) != 0, pattern), key
            assert torch.equal(value, model.state_dict()[key]), key
        else:
            assert torch.equal(value, dense_state[key]), f"{key} changed but is not a target"
    out = _final(loaded, probe)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _final(model, probe))


@pytest.mark.filterwarnings("ignore:The PyTorch API of SparseSemiStructuredTensor is in prototype stage")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_pruned_family_runs_on_semi_structured_weights(name):
    """Every pruned linear layer takes a sparse weight (torch's own tensor class, its
    matmul done densely on CPU) and the model's outputs stay those of the pruned model."""
    family = FAMILIES[name]
    model, report = _prune(name, "2:4", "mask-only", _inputs(family, 8, 0), mask="magnitude")
    probe = _inputs(family, 4, 1)
    before = _final(model, probe)
    linear = {layer.name for layer in report.layers if layer.layout in ("linear", "conv1d")}
    summary = sparse_inference_(model, backend=cpu_kernel_backend())
    assert {d.name for d in summary.converted} == linear  # all tiny shapes are multiples of 4
    if "conv2d" in family.layouts:
        assert all(d.reason.startswith("2:4 but a Conv2d") for d in summary.layers if d.name in
                   {layer.name for layer in report.layers})
    torch.testing.assert_close(_final(model, probe), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_tied_embeddings_stay_tied_and_unpruned(name, tmp_path):
    family = FAMILIES[name]
    model, report = _prune(name, "2:4", "mask-only", _inputs(family, 8, 0), mask="magnitude")
    dense_embeddings = _build(name).get_input_embeddings().weight
    assert not any("lm_head" in layer.name or "embed" in layer.name for layer in report.layers)
    save_pruned(model, report, tmp_path / "out")
    loaded = family.auto.from_pretrained(tmp_path / "out")
    head, embeddings = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert head.data_ptr() == embeddings.data_ptr()
    assert torch.equal(embeddings, dense_embeddings)


def test_weights_shared_inside_the_blocks_are_never_pruned():
    model = _build("llama")
    layers = model.model.layers
    layers[1].mlp.up_proj.weight = layers[0].mlp.up_proj.weight  # one tensor, two places
    report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "batch_size": 4},
                             _inputs(FAMILIES["llama"], 8, 0))
    assert not any(layer.name.endswith("up_proj") for layer in report.layers)
    assert bool((layers[0].mlp.up_proj.weight != 0).all())


def test_unmappable_model_names_what_it_found():
    class Flat(T.PreTrainedModel):
        config_class = T.PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, input_ids):
            return self.b(self.a(input_ids))

    with pytest.raises(SettingError, match="no list of identical modules; pass block_path with") as caught:
        snows_hf.prune_(Flat(T.PretrainedConfig()), {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, torch.randn(4, 4))
    assert caught.value.field == "block_path"

    model = _build("bert")
    model.extra = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
    model.config.model_type = "unknown-family"
    with pytest.raises(ValueError, match=r"ambiguous block lists .*bert\.encoder\.layer \(2\), extra \(2\); pass block_path to choose"):
        snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, _inputs(FAMILIES["bert"], 4, 0))
    assert bool((model.bert.encoder.layer[0].intermediate.dense.weight != 0).all())  # nothing pruned


def test_block_path_flattens_nested_lists():
    model = _build("resnet")
    found = find_block_list(model, "resnet.encoder.stages.*.layers")
    assert len(found) == 4 and found.names == [f"resnet.encoder.stages.{s}.layers.{i}" for s in range(2) for i in range(2)]
    assert all(a is b for a, b in zip(found.modules, find_block_list(model).modules))
    with pytest.raises(ValueError, match="does not name a non-empty ModuleList"):
        find_block_list(model, "resnet.encoder.nothing.*.layers")
