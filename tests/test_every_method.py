"""Every registered method on a few tiny families at 2:4, through :func:`snows_hf.prune_`
with small budgets: each pruned layer follows the pattern and the pruned model's outputs
are finite. The methods come from the registry, so a method added later is in the table
without a new row."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_gpt2, tiny_llama, tiny_vit

import snows_hf
from snows_hf.masks import parse_sparsity, satisfies, to_rows
from snows_hf.methods import METHODS

FAMILIES = {"llama": tiny_llama, "vit": tiny_vit, "bert": tiny_bert, "gpt2": tiny_gpt2}
# Small budgets, for the methods that declare these options.
BUDGET = {"k_step": 1, "newton_steps": 1, "cg_iters": 2}


def _inputs(family: str, n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g)}
    ids = torch.randint(4, VOCAB, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # one padded sample
    return {"input_ids": ids, "attention_mask": mask}


CASES = [(method, family) for method in METHODS for family in FAMILIES]


@pytest.mark.parametrize("method, family", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_a_registered_method_prunes_a_family_to_the_pattern(method, family):
    model = FAMILIES[family]()
    dense = {name: value.clone() for name, value in model.state_dict().items()}
    options = {f.name for f in fields(METHODS[method].config_class)}
    config = {"sparsity": "2:4", "method": method, "batch_size": 4} | {k: v for k, v in BUDGET.items() if k in options}
    report = snows_hf.prune_(model, config, _inputs(family, 8, 0), progress=False)

    pattern = parse_sparsity("2:4")
    assert len(report.layers) >= 4
    for layer in report.layers:
        weight = model.get_submodule(layer.name).weight.detach()
        kept = to_rows(weight, layer.layout) != 0
        assert satisfies(kept, pattern), layer.name
        assert float(kept.float().mean()) == 0.5, layer.name  # exactly 2 of every 4 kept
        assert not torch.equal(weight, dense[f"{layer.name}.weight"]), layer.name
    with torch.no_grad():
        output = model(**_inputs(family, 4, 1))[0]
    assert torch.isfinite(output).all()
