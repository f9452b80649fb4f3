"""Shared fixtures: tiny random models built from configs, saved as model folders.

No test reaches the network: the Hub is switched off before any Hugging Face import.
Every test runs inside its own temporary folder so nothing is left in the repository.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402,F401 - its stderr handler is made now, on the session's stream, not one test's capture

torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 128


def patch_everywhere(monkeypatch, module, name: str, replacement) -> None:
    """Replace ``module.name`` for the test, in ``module`` and in every snows_hf module that
    imported it by name (``from .loading import load_model`` binds it there too), so a stub
    takes effect wherever the library calls it from."""
    import snows_hf

    for info in pkgutil.walk_packages(snows_hf.__path__, "snows_hf."):
        importlib.import_module(info.name)
    original = getattr(module, name)
    for found in list(sys.modules.values()):
        if getattr(found, "__name__", "").startswith("snows_hf") and vars(found).get(name) is original:
            monkeypatch.setattr(found, name, replacement)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """Run each test in an empty folder; relative outputs land there, never in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def registries():
    """For a test that registers into snows-hf's registries (methods, mask selectors,
    adapters, model heads): each put back as it was afterwards, whatever the test added,
    replaced or removed, and however it ended."""
    from snows_hf.adapters import ADAPTERS
    from snows_hf.masks import SELECTORS
    from snows_hf.methods import METHODS
    from snows_hf.heads import TASKS

    tables = (METHODS, SELECTORS, ADAPTERS, TASKS)
    saved = [dict(table) for table in tables]
    yield
    for table, before in zip(tables, saved):  # in place: the package's modules hold these very dicts
        table.clear()
        table.update(before)


def tiny_tokenizer():
    """A word-level fast tokenizer with VOCAB entries (w0, w1, ...), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({f"w{i}": i + 4 for i in range(VOCAB - 4)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_vit(seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=68,
        image_size=32, patch_size=8, num_labels=3,
    )
    return ViTForImageClassification(config).eval()


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=72, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64)).eval()


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=64,
    )
    return BertModel(config).eval()


def cpu_kernel_backend():
    """A 2:4 back end built on torch's own semi-structured tensor class (its dispatch
    table and ``F.linear`` path) with only the matmul done densely, on any device: a model
    forward then meets every operation the GPU kernels see. Tiles of 4 x 4, float32."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    from snows_hf.sparse_inference import KernelBackend

    class CPUKernel(SparseSemiStructuredTensorCUTLASS):
        @classmethod
        def from_dense(cls, weight, alg_id=0):
            return cls(weight.shape, packed=weight.clone(), meta=torch.zeros(1, dtype=torch.int16), packed_t=None,
                       meta_t=None, compressed_swizzled_bitmask=None)

        def _mm(self, B, *, bias=None, should_transpose_dense=False, **kwargs):
            # the kernels' contract: W @ B, or (W @ B^T)^T = B @ W^T (F.linear's case), plus bias
            out = self.packed @ (B.t() if should_transpose_dense else B)
            out = out if bias is None else out + bias[:, None]
            return out.t() if should_transpose_dense else out

    return KernelBackend("cpu-kernel", {torch.float32: (4, 4)}, CPUKernel.from_dense, support=lambda device: None)


def _save(model, processor, path):
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture
def vit_dir(tmp_path):
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    return _save(tiny_vit(), processor, tmp_path / "tiny-vit")


@pytest.fixture
def llama_dir(tmp_path):
    return _save(tiny_llama(), tiny_tokenizer(), tmp_path / "tiny-llama")


@pytest.fixture
def bert_dir(tmp_path):
    return _save(tiny_bert(), tiny_tokenizer(), tmp_path / "tiny-bert")


@pytest.fixture
def home_llama_dir(tmp_path, monkeypatch):
    """A tiny Llama with its tokenizer saved under a private home folder (``HOME`` points
    there): what a push must never name by its path."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    return _save(tiny_llama(), tiny_tokenizer(), home / "models" / "tiny-llama")


@pytest.fixture(scope="module")
def llama64_dir(tmp_path_factory):
    """A 3-block tiny Llama in float64 (no tokenizer), shared by a module's tests:
    exact comparisons between ways of running the same pruning."""
    return _save_model(tiny_llama(layers=3).to(torch.float64), tmp_path_factory.mktemp("llama64") / "tiny")


def _save_model(model, path):
    model.save_pretrained(path)
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub of tests/hub_server.py, with this process's huggingface_hub pointed at it."""
    import huggingface_hub.constants
    from hub_server import HubServer

    server = HubServer().start()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # switched off above for every test
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # plain LFS (HUB_PROTOCOL.md)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.stop()
    assert server.unknown == [], f"requests the loopback hub did not understand: {server.unknown}"
