"""The whole run from Python (:func:`snows_hf.run`): the folder the CLI writes, from a
folder, a loaded model or a Hub id, and pushed to the loopback Hub; evaluate and convert."""

import json
import warnings

import pytest
import torch
from conftest import patch_everywhere, tiny_llama, tiny_tokenizer
from hub_server import TOKEN

import snows_hf
from snows_hf.data import CalibrationConfig
from snows_hf.config import PruneConfig
from snows_hf.workflow import EvalOptions, LoadOptions, PushOptions, SaveOptions, convert, evaluate
from snows_hf.workflow.options import run_options


def _lines(rows=80):
    return [" ".join(f"w{(i * 7 + j) % 120}" for j in range(30)) for i in range(rows)]


def _texts(path, rows=80):
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in _lines(rows)))
    return str(path)


def _data(tmp_path, **extra):
    return CalibrationConfig(dataset=_texts(tmp_path / "d.jsonl"), num_samples=8, seq_len=16, eval_samples=4, **extra)


MAGNITUDE = PruneConfig(sparsity="2:4", method="mask-only", mask="magnitude", batch_size=4)


def test_run_from_a_folder_writes_what_the_cli_writes(llama_dir, tmp_path):
    result = snows_hf.run(str(llama_dir), MAGNITUDE, _data(tmp_path), output_dir=tmp_path / "out", progress=False)

    assert isinstance(result, snows_hf.RunResult)
    assert result.output_dir == tmp_path / "out"
    names = {p.name for p in result.output_dir.iterdir()}
    assert {"config.json", "model.safetensors", "report.json", "recipe.yaml", "README.md", "snows-hf.log",
            "tokenizer.json"} <= names
    payload = json.loads((result.output_dir / "report.json").read_text())
    assert payload["source_model"] == str(llama_dir)
    assert payload["calibration"]["num_samples"] == 8
    assert payload["evaluation"] == result.evaluation
    assert set(result.evaluation) >= {"task", "samples", "dense", "pruned"} and result.evaluation["samples"] == 4
    assert list(payload["phases"]) == ["load", "data", "dense eval", "prune", "pruned eval"]
    assert result.report.sparsity == pytest.approx(0.5)
    assert result.model.model.layers[0].mlp.up_proj.weight.eq(0).float().mean().item() == pytest.approx(0.5)
    assert "saving to" in (result.output_dir / "snows-hf.log").read_text()
    assert "perplexity" in result.format()


def test_run_takes_a_loaded_model_and_dict_settings(tmp_path):
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    result = snows_hf.run(model, {"sparsity": "4:8", "method": "mask-only", "mask": "magnitude"}, {"dataset": _texts(tmp_path / "d.jsonl"),
                          "num_samples": 8, "seq_len": 16}, processor=tokenizer, evaluate=False,
                          output_dir=tmp_path / "out", progress=False)

    assert result.model is model  # pruned in place, no copy
    assert result.evaluation is None
    reloaded = type(model).from_pretrained(result.output_dir)
    assert torch.equal(reloaded.model.layers[1].self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight)
    assert json.loads((result.output_dir / "report.json").read_text())["config"]["sparsity"] == "4:8"


def test_run_refuses_a_loaded_model_with_max_memory_before_pruning(tmp_path):
    with pytest.raises(ValueError, match="pass a Hub id or a folder"):
        snows_hf.run(tiny_llama(), PruneConfig(sparsity="2:4", method="mask-only", mask="magnitude", max_memory="1GiB"),
                     {"dataset": "random", "num_samples": 4, "seq_len": 8}, output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_run_pushes_to_the_hub_and_the_repo_loads(hub, llama_dir, tmp_path):
    result = snows_hf.run(str(llama_dir), MAGNITUDE, _data(tmp_path), output_dir=tmp_path / "out", evaluate=False,
                          push_to_hub="tester/tiny-2of4", token=TOKEN, progress=False)

    assert "tester/tiny-2of4" in result.pushed_url
    pushed = hub.repos[("model", "tester/tiny-2of4")].files
    assert {"model.safetensors", "report.json", "README.md"} <= set(pushed)
    assert str(tmp_path) not in pushed["report.json"].decode()  # no local path goes public


def test_evaluate_and_convert_read_what_run_wrote(llama_dir, tmp_path):
    result = snows_hf.run(str(llama_dir), MAGNITUDE, _data(tmp_path), output_dir=tmp_path / "out", progress=False)

    again = evaluate(result.output_dir, reference=str(llama_dir))  # the recipe's data: the same held-out rows
    assert again.figures["samples"] == 4
    for label in ("dense", "pruned"):
        assert again.figures[label]["perplexity"] == pytest.approx(result.evaluation[label]["perplexity"], rel=1e-5)

    saved, report = convert(result.output_dir, "compact")
    assert saved == tmp_path / "out-compact" and len(report.layers) == len(result.report.layers)
    record = json.loads((saved / "report.json").read_text())
    assert record["evaluation"] == result.evaluation and record["source_model"] == str(llama_dir)


def test_evaluate_reads_of_a_foreign_recipe_nothing_but_says_so(llama_dir, tmp_path, caplog):
    """llm-compressor writes a recipe.yaml too: from Python as from the command line, it
    gives way to the data given (one warning), and without data it is a SettingError on dataset."""
    (llama_dir / "recipe.yaml").write_text("oneshot_stage:\n  pruning_modifiers:\n    SparseGPTModifier: {sparsity: 0.5}\n")
    with pytest.raises(snows_hf.SettingError, match="unknown sections: oneshot_stage") as refused:
        evaluate(llama_dir)
    assert refused.value.field == "dataset"
    with caplog.at_level("WARNING", logger="snows_hf"):
        result = evaluate(llama_dir, {"dataset": _texts(tmp_path / "d.jsonl"), "num_samples": 2, "seq_len": 16,
                                      "eval_samples": 4})
    assert result.figures["samples"] == 4 and len(result.figures["data"]["calibration_rows"]) == 2  # 32 tokens
    warned = (f"recipe '{llama_dir / 'recipe.yaml'}' has unknown sections: oneshot_stage: evaluating on the data "
              "options given instead (which rows its run held out is unknown)")
    assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [warned]


def test_a_masked_lm_is_evaluated_on_its_encoder_states(tmp_path):
    """bert-base-uncased loads as BertForMaskedLM (the bundled recipe's model): its output
    has logits and hidden states but no last_hidden_state."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, vocab_size=128, max_position_embeddings=64)).eval()
    result = snows_hf.run(model, MAGNITUDE, _data(tmp_path), processor=tiny_tokenizer(), output_dir=tmp_path / "out",
                          progress=False)

    assert result.evaluation["task"] == "embedding" and result.evaluation["samples"] == 4
    assert 0 < result.evaluation["pruned"]["cosine_to_dense"] < 1


def test_run_calibrates_on_an_in_memory_dataset_as_on_the_same_rows_in_a_file(tmp_path):
    import datasets
    import yaml

    articles = datasets.Dataset.from_dict({"text": _lines()})
    in_memory = snows_hf.run(tiny_llama(), MAGNITUDE, CalibrationConfig(dataset=articles, num_samples=8, seq_len=16,
                             eval_samples=4), processor=tiny_tokenizer(), output_dir=tmp_path / "out", progress=False)
    from_file = snows_hf.run(tiny_llama(), MAGNITUDE, _data(tmp_path), processor=tiny_tokenizer(),
                             output_dir=tmp_path / "file-out", progress=False)

    assert in_memory.record.data["calibration_rows"] == from_file.record.data["calibration_rows"]
    assert in_memory.evaluation == from_file.evaluation  # the same rows, the same figures
    assert torch.equal(in_memory.model.model.layers[1].mlp.down_proj.weight, from_file.model.model.layers[1].mlp.down_proj.weight)
    label = f"in-memory Dataset (fingerprint {articles._fingerprint}, 80 rows)"
    report = (in_memory.output_dir / "report.json").read_text()
    payload, recipe = json.loads(report), yaml.safe_load((in_memory.output_dir / "recipe.yaml").read_text())
    assert payload["data"]["dataset"] == payload["calibration"]["dataset"] == recipe["data"]["dataset"] == label
    assert payload["data"]["rows_in_split"] == 80 and payload["data"]["split"] is None  # from_dict: no split name
    assert str(tmp_path) not in report + (in_memory.output_dir / "recipe.yaml").read_text()

    # the recipe cannot bring the data back: said as such, and the same data given again is read as the run read it
    with pytest.raises(snows_hf.SettingError, match="held in memory and saved nowhere; pass that data again as dataset"):
        evaluate(in_memory.output_dir)
    again = evaluate(in_memory.output_dir, articles)
    assert again.figures["samples"] == 4
    assert again.figures["model"]["perplexity"] == pytest.approx(in_memory.evaluation["pruned"]["perplexity"], rel=1e-5)


def test_run_reads_the_split_of_an_in_memory_dataset_dict(tmp_path):
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": _lines(3)}),
                                   "calibration": datasets.Dataset.from_dict({"text": _lines(40)})})
    result = snows_hf.run(tiny_llama(), MAGNITUDE, {"dataset": splits, "split": "calibration", "num_samples": 4,
                          "seq_len": 16}, processor=tiny_tokenizer(), evaluate=False, output_dir=tmp_path / "out",
                          progress=False)
    assert result.record.data["split"] == "calibration" and result.record.data["rows_in_split"] == 40
    assert result.record.data["dataset"].startswith("in-memory DatasetDict (train: fingerprint ")

    with pytest.raises(snows_hf.SettingError, match="no split 'test'; set split to one of: train, calibration") as err:
        snows_hf.run(tiny_llama(), MAGNITUDE, {"dataset": splits, "split": "test"}, processor=tiny_tokenizer(),
                     output_dir=tmp_path / "out2", progress=False)
    assert err.value.field == "split"
    with pytest.raises(ValueError, match="dataset must be a name or path, a datasets.Dataset or a DatasetDict, got 3"):
        CalibrationConfig(dataset=3)


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_without_saving_writes_nothing_and_its_save_writes_what_a_saving_run_writes(llama_dir, tmp_path):
    saved = snows_hf.run(str(llama_dir), MAGNITUDE, _data(tmp_path), save=SaveOptions(tmp_path / "saved"), progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    unsaved = snows_hf.run(str(llama_dir), MAGNITUDE, _data(tmp_path), save=None, progress=False)

    assert unsaved.output_dir is None and sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no checkpoint
    assert unsaved.evaluation == saved.evaluation and unsaved.report.sparsity == pytest.approx(0.5)
    assert unsaved.save(tmp_path / "later") == unsaved.output_dir == tmp_path / "later"
    first, later = saved.output_dir, unsaved.output_dir
    assert _sha256(later / "model.safetensors") == _sha256(first / "model.safetensors")
    assert (later / "recipe.yaml").read_text() == (first / "recipe.yaml").read_text()
    payload, again = (json.loads((folder / "report.json").read_text()) for folder in (first, later))
    assert list(again) == list(payload) and again["snows_hf_files"] == payload["snows_hf_files"]
    assert list(again["phases"]) == list(payload["phases"]) == ["load", "data", "dense eval", "prune", "pruned eval"]
    assert f"saving to {later}" in (later / "snows-hf.log").read_text()
    assert list(unsaved.record.phases)[-1] == "save"


@pytest.mark.parametrize("setting, value", [("resume", True), ("output_dir", "out"), ("push_to_hub", "me/model"),
                                            ("save_format", "compact"), ("overwrite", True)])
def test_a_run_without_saving_refuses_the_settings_of_saving(setting, value, tmp_path):
    with pytest.raises(snows_hf.SettingError, match=f"{setting}={value!r}.* save=False") as err:
        snows_hf.run(tiny_llama(), MAGNITUDE, {"dataset": "random", "num_samples": 4, "seq_len": 8}, save=False,
                     progress=False, **{setting: value})
    assert err.value.field == setting
    assert list(tmp_path.iterdir()) == []


def test_run_evaluates_in_batches_of_eval_batch_size_and_refuses_none(tmp_path, monkeypatch):
    import snows_hf.evaluation

    sizes = []
    outputs = snows_hf.evaluation.model_outputs
    patch_everywhere(monkeypatch, snows_hf.evaluation, "model_outputs",
                        lambda model, eval_set, batch_size: sizes.append(batch_size) or outputs(model, eval_set, batch_size))
    snows_hf.run(tiny_llama(), MAGNITUDE, _data(tmp_path), processor=tiny_tokenizer(), save=False, eval_batch_size=3,
                 progress=False)
    assert sizes == [3, 3]  # dense, then pruned; the pruning's micro-batches stay at config.batch_size (4)

    with pytest.raises(snows_hf.SettingError, match="eval_batch_size must be at least 1, got 0"):
        snows_hf.run(tiny_llama(), MAGNITUDE, {"dataset": "random", "num_samples": 4, "seq_len": 8}, save=False,
                     eval_batch_size=0, progress=False)


def test_the_old_keywords_and_the_option_groups_write_the_same_folder(llama_dir, tmp_path):
    data = _data(tmp_path)
    with pytest.warns(FutureWarning):
        old = snows_hf.run(str(llama_dir), MAGNITUDE, data, output_dir=tmp_path / "old", processor=str(llama_dir),
                           eval_batch_size=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the groups are the current spelling: no warning
        new = snows_hf.run(str(llama_dir), MAGNITUDE, data, save=SaveOptions(tmp_path / "new"),
                           load=LoadOptions(processor=str(llama_dir)), evaluation=EvalOptions(batch_size=3),
                           progress=False)
    for name in ("model.safetensors", "recipe.yaml", "config.json"):
        assert (old.output_dir / name).read_bytes() == (new.output_dir / name).read_bytes(), name
    payload, again = (json.loads((r.output_dir / "report.json").read_text()) for r in (old, new))
    untimed = [[{k: v for k, v in layer.items() if k != "seconds"} for layer in run["layers"]] for run in (payload, again)]
    assert untimed[0] == untimed[1] and payload["evaluation"] == again["evaluation"]
    assert isinstance(new.config, PruneConfig) and new.calibration.seq_len == 16


def test_the_old_keywords_are_mapped_into_the_groups():
    with pytest.warns(FutureWarning):
        save, load, evaluation = run_options(True, LoadOptions(), EvalOptions(), {
            "output_dir": "out", "save_format": "compact", "overwrite": True, "resume": True, "push_to_hub": "me/m",
            "private": True, "token": "hf_secret", "processor": "tok", "trust_remote_code": True, "allow_pickle": True,
            "evaluate": False, "eval_batch_size": 2, "tasks": "piqa"})
    assert save == SaveOptions("out", "compact", overwrite=True, resume=True,
                               push_to_hub=PushOptions("me/m", private=True, token="hf_secret"))
    assert load == LoadOptions("tok", trust_remote_code=True, allow_pickle=True)
    assert (evaluation.held_out, evaluation.batch_size, evaluation.tasks.tasks) == (False, 2, ["piqa"])
    # a flat keyword goes on top of the group it belongs to; private and token without a repo push nothing
    with pytest.warns(FutureWarning):
        save, _, _ = run_options(SaveOptions("out", push_to_hub=PushOptions("me/m")), LoadOptions(), EvalOptions(),
                                 {"overwrite": True, "private": True})
    assert save == SaveOptions("out", overwrite=True, push_to_hub=PushOptions("me/m", private=True))
    with pytest.warns(FutureWarning):
        assert run_options(SaveOptions(), LoadOptions(), EvalOptions(), {"private": True})[0] == SaveOptions()


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, "random", output_dir="out", overwrite=True,
                                      evaluate=False, eval_batch_size=2, push_to_hub="me/m"),
                 "snows_hf.run: output_dir=, overwrite=, evaluate=, eval_batch_size=, push_to_hub= are deprecated; "
                 "write save=SaveOptions(output_dir=..., overwrite=..., push_to_hub=PushOptions(repo_id=...)), "
                 "evaluation=EvalOptions(held_out=..., batch_size=...)", id="run"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, "random", save=False, processor="tok"),
                 "snows_hf.run: processor=, save=False are deprecated; write save=None, "
                 "load=LoadOptions(processor=...)", id="run-unsaved"),
    pytest.param(lambda: evaluate("no-model", "random", batch_size=2, trust_remote_code=False),
                 "snows_hf.evaluate: batch_size=, trust_remote_code= are deprecated; write "
                 "evaluation=EvalOptions(batch_size=...), load=LoadOptions(trust_remote_code=...)", id="evaluate"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, "random", save=True),
                 "snows_hf.run: save=True is deprecated; write save=SaveOptions()", id="run-saved"),
])
def test_the_old_keywords_warn_once_naming_the_new_spelling(call, message, tmp_path):
    with pytest.warns(FutureWarning) as caught, pytest.raises(Exception):  # no-model: the run stops at loading
        call()
    lines = [str(w.message) for w in caught if w.category is FutureWarning]
    assert lines == [message]
    assert caught[0].filename == __file__  # it points at the caller's line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("call, field, message", [
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, save=None, output_dir="out"), "output_dir",
                 "output_dir='out' only matters when saving, and a run with save=None saves nothing; leave it out, "
                 "and pass it to result.save(...)", id="unsaved-output-dir"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, save=None, resume=True), "resume",
                 "resume=True continues the checkpoint that a saving run keeps beside its output; a run with "
                 "save=None keeps none; leave out resume=True or save=None", id="unsaved-resume"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, save=None, push_to_hub="me/m"), "push_to_hub",
                 "push_to_hub='me/m' only matters when saving, and a run with save=None saves nothing; leave it out, "
                 "and push the folder result.save(...) writes", id="unsaved-push"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, save=SaveOptions(save_format="zip")), "save_format",
                 "save_format must be dense or compact, got 'zip'", id="save-format"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, save=SaveOptions(push_to_hub="me/m")), "push_to_hub",
                 "push_to_hub must be a PushOptions or None, got 'me/m'", id="push-as-text"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, load={"processor": "tok"}), "load",
                 "load must be a LoadOptions, got {'processor': 'tok'}", id="load-as-dict"),
    pytest.param(lambda: snows_hf.run("no-model", MAGNITUDE, evaluation=EvalOptions(batch_size=0)), "batch_size",
                 "batch_size must be at least 1, got 0", id="eval-batch-size"),
    pytest.param(lambda: evaluate("no-model", evaluation=EvalOptions(held_out=False)), "held_out",
                 "held_out=False leaves nothing to evaluate without lm-eval tasks; name tasks with tasks or leave out "
                 "held_out=False", id="evaluate-nothing"),
])
def test_a_combination_the_groups_cannot_hold_is_one_clear_error(call, field, message, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(snows_hf.SettingError) as err:
            call()
    assert (str(err.value), err.value.field) == (message, field)
    assert list(tmp_path.iterdir()) == []


def test_a_push_token_is_not_shown():
    push = PushOptions("me/m", token="hf_secret")
    assert "hf_secret" not in repr(push) and "hf_secret" not in repr(SaveOptions(push_to_hub=push))
    with pytest.raises(AttributeError):  # frozen: a group is what it was checked as
        push.repo_id = 3


def test_an_unknown_keyword_is_pythons_own_error():
    with pytest.raises(TypeError, match="run\\(\\) got an unexpected keyword argument 'outptu_dir'"):
        snows_hf.run("no-model", MAGNITUDE, outptu_dir="out")
