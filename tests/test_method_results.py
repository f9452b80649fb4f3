"""Methods speak for their own results: the pipeline and the model card name no method's
metric keys, and whatever a registered method says of its metrics reaches the per-layer
log line, the run's figures and log, and the card's column and plot."""

import ast
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

import snows_hf
from snows_hf.card import build_card, plot_layers
from snows_hf.methods import METHODS, LayerPlot, MaskOnly, MethodConfig

PACKAGE = Path(snows_hf.__file__).parent
READERS = ("pipeline.py", "card.py")  # the modules that must ask the method instead
IDS = torch.randint(4, 100, (8, 12), generator=torch.Generator().manual_seed(0))


def _named_keys(source: str, keys: set[str]) -> list[str]:
    """The keys ``source`` names: as a string literal of its own (``m["k"]``, an f-string
    part), or, for keys that cannot be ordinary words (``heldout_loss_after``), anywhere in
    its text, comments and docstrings included."""
    literals = {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)}
    return sorted(k for k in keys if k in literals or ("_" in k and re.search(rf"\b{k}\b", source)))


def test_pipeline_and_card_name_no_metric_key_of_any_method():
    keys = set().union(*(method.metric_keys for method in METHODS.values()))
    assert {"heldout_loss_after", "cg_iterations", "joint_solve", "stop_reason", "numerics", "k"} <= keys
    found = {name: _named_keys((PACKAGE / name).read_text(), keys) for name in READERS}
    assert found == {name: [] for name in READERS}


def test_the_key_search_finds_keys_where_code_reads_them():
    """The check above would pass on a search that finds nothing: it finds these."""
    old = 'm = layer.metrics\nif "heldout_loss_after" in m:\n    text = f"{m[\'k\']}"  # counts joint_solve once\n'
    found = _named_keys(old, {"heldout_loss_after", "k", "joint_solve", "window"})
    assert found == ["heldout_loss_after", "joint_solve", "k"]
    assert _named_keys('"a window of k steps"', {"k", "window"}) == []  # plain words in text are not keys


@dataclass
class EchoConfig(MethodConfig):
    name = "echo-test"


class Echo(MaskOnly):
    """Mask only, recording the share of each layer's weights it kept."""

    config_class = EchoConfig
    metric_keys = frozenset({"echo_kept"})

    def prune_module(self, job):
        result = super().prune_module(job)
        result.metrics["echo_kept"] = float(result.mask_rows.float().mean())
        return result

    @classmethod
    def layer_text(cls, metrics):
        return f", echo kept {metrics['echo_kept']:.0%}"

    @classmethod
    def run_figures(cls, report):
        return {"echo_layers": len(report.layers)}

    @classmethod
    def run_lines(cls, figures):
        return [f"echo: {figures['echo_layers']} layers"]

    @classmethod
    def card_column(cls, metrics):
        return "share kept (echo)", [f"{m['echo_kept']:.3f}" for m in metrics]

    @classmethod
    def card_plot(cls, metrics):
        return LayerPlot("share kept", [("echo", [m["echo_kept"] for m in metrics], "#4c72b0")])


def _png_height(path: Path) -> int:
    return struct.unpack(">I", path.read_bytes()[20:24])[0]  # IHDR: width, then height


def test_a_registered_method_speaks_in_the_log_the_report_and_the_card(caplog, tmp_path, monkeypatch):
    model = tiny_llama(layers=1)
    monkeypatch.setitem(METHODS, EchoConfig.name, Echo)  # registered for this test only
    with caplog.at_level("INFO", logger="snows_hf"):
        report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "echo-test", "mask": "magnitude",
                                         "batch_size": 4, "diagnostics": False}, IDS)
        payload = report.to_dict()
        card = str(build_card(model, payload))
        assert plot_layers(payload, tmp_path / "echo.png")
    lines = [r.getMessage() for r in caplog.records if r.name == "snows_hf.layers"]
    assert len(lines) == len(report.layers) == 7
    assert re.fullmatch(r"model\.layers\.0\.self_attn\.q_proj: 50\.0% sparse, echo kept 50%, \d+\.\d s", lines[0])
    assert report.solver == {"echo_layers": 7} == payload["solver"]
    assert [r.getMessage() for r in caplog.records if r.name == "snows_hf.pipeline"][-1] == "echo: 7 layers"
    assert "| layer | shape | sparsity | share kept (echo) |" in card
    assert "| `model.layers.0.self_attn.q_proj` | 32x32 | 50.00% | 0.500 |" in card
    plot_layers(payload | {"config": {**payload["config"], "method": "mask-only"}}, tmp_path / "plain.png")
    assert _png_height(tmp_path / "echo.png") > _png_height(tmp_path / "plain.png")  # its own panel under sparsity


@pytest.mark.parametrize("unit", ["module", "group", "block"])
def test_snows_records_only_the_keys_it_declares_and_the_mask_only_methods_none(unit):
    settings = {"sparsity": "2:4", "k_step": 1, "newton_steps": 1, "cg_iters": 2, "batch_size": 4}
    report = snows_hf.prune_(tiny_llama(layers=1), {**settings, "method": "snows", "refit_unit": unit}, IDS)
    recorded = set().union(*(layer.metrics for layer in report.layers))
    assert "heldout_loss_after" in recorded and recorded <= METHODS["snows"].metric_keys
    assert ("joint_solve" in recorded) == (unit != "module")
    plain = snows_hf.prune_(tiny_llama(layers=1), {"sparsity": "2:4", "method": "mask-only", "batch_size": 4}, IDS)
    assert all(layer.metrics == {} for layer in plain.layers) and plain.solver == {}
    assert METHODS["mask-only"].metric_keys == frozenset()
