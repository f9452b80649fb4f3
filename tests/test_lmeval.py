"""lm-evaluation-harness tasks, offline: a tiny multiple-choice task defined in
tests/data/lmeval on a local JSON file, scored on a tiny Llama, checked against the
log-likelihoods of each choice computed here by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_llama, tiny_tokenizer

import snows_hf
from snows_hf.cli import main
from snows_hf.fields import SettingError

pytest.importorskip("lm_eval")

TASK_DIR = Path(__file__).parent / "data" / "lmeval"
TASK = "snows_tiny_choice"
LIMIT = 6
MAGNITUDE = {"sparsity": "0.5", "method": "mask-only", "mask": "magnitude", "diagnostics": False, "batch_size": 4}


def local_task(folder: Path) -> Path:
    """The test task written into ``folder``, its data file named by absolute path (datasets
    reads a relative one from the working folder)."""
    config = yaml.safe_load((TASK_DIR / f"{TASK}.yaml").read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(TASK_DIR / "items.jsonl")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


@torch.no_grad()
def hand_scores(model, tokenizer, limit=LIMIT) -> dict[str, float]:
    """acc and acc_norm of ``model`` on the first ``limit`` items, from each choice's summed
    log-likelihood after its context (lm-eval's multiple choice: the choice follows a space;
    acc_norm divides by the choice's length in characters)."""
    items = [json.loads(line) for line in (TASK_DIR / "items.jsonl").read_text().splitlines()][:limit]
    hits = {"acc": 0, "acc_norm": 0}
    for item in items:
        context = tokenizer(item["context"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in item["choices"]:
            whole = tokenizer(f"{item['context']} {choice}", add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
            targets = whole[len(context):]
            scores.append(sum(float(logits[len(context) - 1 + i, t]) for i, t in enumerate(targets)))
        lengths = [len(choice) for choice in item["choices"]]
        hits["acc"] += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
        normed = [s / n for s, n in zip(scores, lengths)]
        hits["acc_norm"] += int(max(range(len(normed)), key=normed.__getitem__) == item["label"])
    return {name: count / len(items) for name, count in hits.items()}


def _values(rows) -> dict[str, float]:
    return {row["metric"]: row["value"] for row in rows if row["task"] == TASK}


def _texts(path: Path, n=60) -> Path:
    path.write_text("".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 120 + 4}" for j in range(30))}) + "\n"
                            for i in range(n)))
    return path


def test_prune_scores_the_task_dense_and_pruned_as_a_hand_computation_does(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    tokenizer = tiny_tokenizer()
    dense_scores = hand_scores(tiny_llama(), tokenizer)
    tasks = local_task(tmp_path / "my_tasks")
    result = snows_hf.run(tiny_llama(), MAGNITUDE, {"dataset": str(_texts(tmp_path / "d.jsonl")), "num_samples": 8,
                                                    "seq_len": 16, "eval_samples": 4},
                          processor=tokenizer, output_dir=tmp_path / "out", progress=False,
                          tasks={"tasks": [str(tasks)], "limit": LIMIT})
    figures = result.record.tasks
    assert _values(figures["dense"]) == pytest.approx(dense_scores, abs=1e-12)
    assert _values(figures["pruned"]) == pytest.approx(hand_scores(result.model, tokenizer), abs=1e-12)
    assert {row["samples"] for row in figures["pruned"]} == {LIMIT}
    assert all(row["stderr"] is not None for row in figures["pruned"])
    assert figures["datasets"] == {TASK: {"path": "json", "name": None, "split": "test"}}

    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"] == json.loads(json.dumps(figures))
    assert report["evaluation"]["pruned"]["perplexity"] > 0  # the held-out figures too
    assert str(tmp_path) not in json.dumps(report["tasks"]) + (out / "README.md").read_text()  # the task by its name
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["evaluation"] == {"tasks": [str(tasks)], "limit": LIMIT}  # what reruns need

    card = ModelCard.load(out / "README.md")
    assert "## Zero-shot tasks (lm-evaluation-harness)" in card.text
    pruned_acc = _values(figures["pruned"])["acc"]
    assert f"| {TASK} ({LIMIT}) | acc | " in card.text and f"{pruned_acc:.4f} ± " in card.text
    entries = {(r.task_name, r.metric_type, r.metric_name): r for r in card.data.eval_results if r.task_name == TASK}
    assert entries[(TASK, "acc", "acc (pruned)")].metric_value == pruned_acc
    assert entries[(TASK, "acc", "acc (dense baseline)")].metric_value == _values(figures["dense"])["acc"]
    assert {(r.dataset_type, r.dataset_name, r.dataset_split) for r in entries.values()} == {("custom", TASK, "test")}
    # what the Hub renders: the metadata classes write model-index and read it back unchanged
    again = ModelCardData(model_name="m", eval_results=list(entries.values())).to_dict()
    assert again["model-index"][0]["results"][0]["task"]["name"] == TASK
    back = ModelCardData(**again).eval_results
    assert {(r.task_name, r.metric_type, r.metric_value) for r in back} == {
        (r.task_name, r.metric_type, r.metric_value) for r in entries.values()}


def test_eval_scores_a_compact_checkpoint_against_its_reference_from_the_command_line(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    dense = tiny_llama()
    dense.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    result = snows_hf.run(str(tmp_path / "dense"), MAGNITUDE, {"dataset": str(_texts(tmp_path / "d.jsonl")),
                                                                "num_samples": 8, "seq_len": 16},
                          output_dir=tmp_path / "compact", save_format="compact", evaluate=False, progress=False)
    tasks = local_task(tmp_path / "my_tasks")
    code = main(["eval", str(tmp_path / "compact"), "--reference", str(tmp_path / "dense"), "--tasks",
                 str(tasks / f"{TASK}.yaml"), "--limit", str(LIMIT), "--json", str(tmp_path / "eval.json"),
                 "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert "samples" not in figures  # tasks alone: no held-out data read
    assert _values(figures["tasks"]["dense"]) == pytest.approx(hand_scores(dense, tokenizer), abs=1e-12)
    assert _values(figures["tasks"]["pruned"]) == pytest.approx(hand_scores(result.model, tokenizer), abs=1e-12)
    assert out.splitlines()[0].split() == ["lm-eval", "task", "(items", "scored)", "metric", "dense", "pruned", "change"]
    assert out.splitlines()[1].startswith(f"{TASK} ({LIMIT})")


def test_a_model_placed_with_max_memory_is_scored_where_it_is_placed(tmp_path, monkeypatch):
    from snows_hf.harness import scoring as harness  # where PairedTasks finds score_tasks

    tokenizer = tiny_tokenizer()
    model = tiny_llama()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tasks = local_task(tmp_path / "my_tasks")
    placed, score = [], harness.score_tasks
    monkeypatch.setattr(harness, "score_tasks", lambda m, *a, **k: placed.append(dict(m.hf_device_map)) or score(m, *a, **k))
    # about one block's weights in CPU memory: the rest waits on disk, brought in by accelerate's hooks
    figures = snows_hf.evaluate(str(tmp_path / "model"), tasks={"tasks": [str(tasks)], "limit": LIMIT},
                                device="cpu", max_memory="cpu=40KiB").figures
    assert "disk" in placed[0].values()
    assert _values(figures["tasks"]["model"]) == pytest.approx(hand_scores(model, tokenizer), abs=1e-6)


def test_unknown_task_names_are_one_line_with_the_close_matches(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "no-model"), "--tasks", "arc_esy"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("snows-hf: error: lm-eval has no task 'arc_esy' (close matches: arc_easy")


def test_without_lm_eval_tasks_are_one_line_naming_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval fails as when it is not installed
    code = main(["eval", str(tmp_path / "no-model"), "--tasks", "arc_easy"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == ('snows-hf: error: --tasks runs lm-evaluation-harness, which is not installed; install it with: '
                   'pip install "snows-hf[lmeval]"\n')


def test_importing_snows_hf_does_not_import_lm_eval():
    import subprocess

    code = "import snows_hf, snows_hf.harness, snows_hf.workflow, snows_hf.card, sys; print('lm_eval' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("value, message", [
    ({"limit": 0, "tasks": ["piqa"]}, "limit must be at least 1"),
    ({"limit": 5}, "limit limits the items of each lm-eval task, and no task is named; name them with tasks"),
    ({"tasks": ["no/such/folder"]}, "no task file or folder 'no/such/folder'"),
])
def test_task_settings_that_cannot_work_are_refused(value, message):
    from snows_hf.harness import TaskSettings

    with pytest.raises(SettingError, match=message):
        TaskSettings.of(value).suite()


def test_prune_with_tasks_from_the_command_line_publishes_the_task_folder_by_its_name(hub, home_llama_dir, tmp_path, monkeypatch):
    from hub_server import TOKEN

    model = home_llama_dir
    home = model.parents[1]
    tasks = local_task(home / "private" / "my_tasks")
    out = tmp_path / "work" / "out"
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the Hub only for the push
    assert main(["prune", str(model), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset",
                 str(_texts(tmp_path / "d.jsonl")), "--num-samples", "4", "--seq-len", "16", "--no-eval",
                 "--tasks", str(tasks), "--limit", "2", "--output-dir", str(out), "--quiet"]) == 0
    assert yaml.safe_load((out / "recipe.yaml").read_text())["evaluation"] == {"tasks": [str(tasks)], "limit": 2}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert main(["push", str(out), "tester/tasks", "--token", TOKEN, "--quiet"]) == 0
    pushed = hub.repos[("model", "tester/tasks")].files
    assert yaml.safe_load(pushed["recipe.yaml"])["evaluation"] == {"tasks": ["my_tasks"], "limit": 2}
    for name, data in pushed.items():
        assert str(home).encode() not in data and str(tmp_path).encode() not in data, name
    assert f"| {TASK} (2) | acc |".encode() in pushed["README.md"]


@pytest.mark.parametrize("command", ["eval", "prune"])
def test_help_documents_tasks_and_limit(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--tasks TASKS lm-evaluation-harness tasks to score dense and pruned, comma-separated" in text
    assert "--limit N score only the first N items of each task" in text
    assert ("A task file is code: lm-eval runs its templates and the Python it names with your rights, so name only "
            "files you trust (a recipe may name registered tasks only)") in text
    assert 'pip install "snows-hf[lmeval]"' in text
