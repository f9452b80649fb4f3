"""``eval`` of a folder from elsewhere (issue 30, items 4 and 6).

Its ``recipe.yaml`` chooses *which* rows are evaluated (dataset, configuration, split,
columns, seed, and the calibration rows to skip), never how much a run reads: the number
of held-out samples and their length are eval's own (its options and defaults), a Hub
split is streamed unless the user says otherwise, and the calibration rows skipped are
bounded. A recipe that eval cannot read (another tool's, a newer version's, a broken
file) gives way to the data options with one warning line, or, without a dataset
option, is one error line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import snows_hf
from snows_hf.cli import main


def _texts(path: Path, n: int = 40, words: int = 30) -> Path:
    path.write_text("".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 120}" for j in range(words))}) + "\n"
                            for i in range(n)))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _recipe(folder: Path, data: dict, **sections) -> None:
    sections = {"snows_hf_version": "0.1.0", "prune": {"sparsity": "2:4", "config_version": 4}, **sections}
    (folder / "recipe.yaml").write_text(yaml.safe_dump({**sections, "data": data}, sort_keys=False))


# ---------------------------------------------------------------------------- item 6: recipes eval cannot read

_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))

UNREADABLE = [
    pytest.param("oneshot_stage:\n  pruning_modifiers:\n    SparseGPTModifier:\n      sparsity: 0.5\n"
                 "      mask_structure: '2:4'\n      targets: ['re:model.layers.\\\\d+$']\n",
                 "unknown sections: oneshot_stage", id="llm-compressor"),
    pytest.param("snows_hf_version: 9.0.0\nprune: {sparsity: '2:4', config_version: 99}\ndata: {dataset: other.jsonl}\n",
                 "config_version 99", id="newer-config-version"),
    pytest.param("prune: {sparsity: '2:4', config_version: true}\ndata: {dataset: other.jsonl}\n",
                 "config_version True", id="config-version-not-a-number"),
    pytest.param("prune: {sparsity: '2:4'}\ndata: {dataset: other.jsonl}\nextras: {colour: blue}\n",
                 "unknown sections: extras", id="unknown-section"),
    pytest.param("prune: {sparsity: '2:4'}\ndata: {dataset: other.jsonl, rows: 12}\n",
                 "unknown keys data.rows", id="unknown-data-key"),
    pytest.param("prune: {sparsity: '2:4'}\ndata: {dataset: other.jsonl, num_samples: many}\n",
                 "num_samples", id="data-wrong-type"),
    pytest.param("prune: {sparsity: '2:4'}\ndata: [other.jsonl]\n", "'data:' must be a mapping", id="data-not-a-mapping"),
    pytest.param(_BOMB, "uses the YAML alias *a", id="yaml-alias-bomb"),
    pytest.param("- other.jsonl\n- 12\n", "not a mapping", id="a-list"),
    pytest.param("just words\n", "not a mapping", id="a-scalar"),
    pytest.param("", "not a mapping", id="empty"),
    pytest.param(bytes(range(256)) * 8, "not UTF-8 text", id="binary"),
    pytest.param(b"# " + b"x" * 2**20 + b"\n", "over 1 MiB", id="over-1-MiB"),
    pytest.param(Path, "not a regular file", id="a-folder"),
    pytest.param(os.mkfifo, "not a regular file", id="a-fifo"),
]


def _plant(folder: Path, content) -> None:
    """``content`` as the folder's recipe.yaml: text, bytes, or a call that makes the path (a folder, a FIFO)."""
    path = folder / "recipe.yaml"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is Path:
        path.mkdir()
    else:
        content(path)


@pytest.mark.parametrize("content, reason", UNREADABLE)
def test_a_recipe_eval_cannot_read_gives_way_to_the_data_options_with_one_warning(content, reason, llama_dir, tmp_path,
                                                                                  capsys):
    _plant(llama_dir, content)
    _texts(tmp_path / "d.jsonl")
    before = _snapshot(tmp_path)
    code = main(["eval", str(llama_dir), "--dataset", "d.jsonl", "--num-samples", "2", "--seq-len", "16",
                 "--eval-samples", "4", "--json", "figures.json", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("snows-hf:")]  # datasets' progress bars aside
    assert code == 0 and "Traceback" not in err, err
    assert len(lines) == 1 and "error" not in lines[0], err
    assert "recipe.yaml" in lines[0] and reason in lines[0] and "data options" in lines[0], lines[0]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["data"]["dataset"] == "d.jsonl" and figures["samples"] == 4  # the options, not the recipe
    (tmp_path / "figures.json").unlink()
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("content, reason", UNREADABLE)
@pytest.mark.parametrize("options", [[], ["--eval-samples", "4", "--seq-len", "16"]], ids=["no-options", "no-dataset"])
def test_a_recipe_eval_cannot_read_and_no_dataset_option_is_one_error_line(content, reason, options, llama_dir, tmp_path,
                                                                            capsys):
    _plant(llama_dir, content)
    before = _snapshot(tmp_path)
    code = main(["eval", str(llama_dir), *options])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert "recipe.yaml" in errors[0] and reason in errors[0] and "--dataset PATH" in errors[0], errors[0]
    assert _snapshot(tmp_path) == before


def test_only_the_data_section_is_read_so_an_unknown_prune_key_does_not_matter(llama_dir, tmp_path, capsys):
    """eval needs the data settings only: the pruning settings of a recipe (here with a key
    this version does not know) are not its business."""
    _texts(tmp_path / "d.jsonl")
    _recipe(llama_dir, {"dataset": str(tmp_path / "d.jsonl"), "num_samples": 2, "seq_len": 16, "eval_samples": 4},
            prune={"sparsity": "2:4", "config_version": 4, "polish": "extra"})
    assert main(["eval", str(llama_dir), "--json", "figures.json"]) == 0
    err = capsys.readouterr().err
    assert "evaluation data from" in err and "warning" not in err.lower(), err
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["samples"] == 4 and figures["data"]["dataset"] == str(tmp_path / "d.jsonl")


# ---------------------------------------------------------------------------- item 4: amounts are eval's own


def test_a_recipes_held_out_count_is_capped_by_evals_own(llama_dir, tmp_path, capsys):
    """A recipe asking for 10^8 held-out samples gets eval's default (128); --eval-samples is the user's choice."""
    _texts(tmp_path / "d.jsonl", n=400)
    _recipe(llama_dir, {"dataset": str(tmp_path / "d.jsonl"), "num_samples": 2, "seq_len": 16,
                        "eval_samples": 10**8})
    assert main(["eval", str(llama_dir), "--json", "figures.json"]) == 0
    err = capsys.readouterr().err
    assert json.loads((tmp_path / "figures.json").read_text())["samples"] == 128
    assert "recipe asked for 100000000 held-out samples: evaluating 128" in err, err
    assert main(["eval", str(llama_dir), "--eval-samples", "200", "--json", "figures.json", "--quiet"]) == 0
    assert json.loads((tmp_path / "figures.json").read_text())["samples"] == 200
    _recipe(llama_dir, {"dataset": str(tmp_path / "d.jsonl"), "num_samples": 2, "seq_len": 16, "eval_samples": 0})
    assert main(["eval", str(llama_dir), "--json", "figures.json", "--quiet"]) == 0  # a run that evaluated nothing
    assert json.loads((tmp_path / "figures.json").read_text())["samples"] == 128


def test_a_recipes_sequence_length_is_capped_and_its_calibration_rows_still_skipped(llama_dir, tmp_path, capsys):
    """seq_len 4096 on a model of 128 positions: sequences of 128 tokens, after the rows that
    4 x 4096 calibration tokens took (the same rows the run calibrated on, none of them evaluated)."""
    _texts(tmp_path / "d.jsonl", n=800)
    _recipe(llama_dir, {"dataset": str(tmp_path / "d.jsonl"), "num_samples": 4, "seq_len": 4096, "eval_samples": 8})
    assert main(["eval", str(llama_dir), "--json", "figures.json"]) == 0
    err = capsys.readouterr().err
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["samples"] == 8
    assert len(figures["data"]["calibration_rows"]) == -(-4 * 4096 // 30)  # 30-token rows until 16,384 tokens
    assert not set(figures["data"]["calibration_rows"]) & set(figures["data"]["eval_rows"])
    assert len(figures["data"]["eval_rows"]) == -(-8 * 128 // 30)
    assert "recipe's seq_len 4096" in err and "128" in err, err


def test_eval_at_another_length_evaluates_only_rows_the_run_held_out(llama_dir, tmp_path, capsys):
    """A run calibrated on 8 x 32 tokens; eval at --seq-len 16 skips the same rows, not 8 x 16 tokens' worth."""
    _texts(tmp_path / "d.jsonl")
    assert main(["prune", str(llama_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "d.jsonl",
                 "--num-samples", "8", "--seq-len", "32", "--eval-samples", "4", "--output-dir", "out", "--quiet"]) == 0
    report = json.loads(Path("out/report.json").read_text())
    assert main(["eval", "out", "--seq-len", "16", "--json", "figures.json", "--quiet"]) == 0
    figures = json.loads(Path("figures.json").read_text())
    assert figures["data"]["calibration_rows"] == report["data"]["calibration_rows"]
    assert not set(figures["data"]["eval_rows"]) & set(report["data"]["calibration_rows"])
    assert figures["data"]["eval_rows"][0] == report["data"]["eval_rows"][0]  # the run's first held-out row


def test_the_line_naming_a_recipes_data_stays_short_whatever_its_names(llama_dir, tmp_path, capsys):
    _recipe(llama_dir, {"dataset": "tester/" + "x" * 50_000, "dataset_config": "c" * 50_000, "split": "s" * 50_000})
    main(["eval", str(llama_dir)])  # the Hub is off here: what follows fails, the line comes first
    line = next(line for line in capsys.readouterr().err.splitlines() if "evaluation data from" in line)
    assert len(line) < 1000 + len(str(llama_dir)) and "dataset 'tester/xxx" in line, line[:2000]


# ---------------------------------------------------------------------------- item 4: a Hub split, through the loopback Hub

SHARDS, ROWS_PER_SHARD = 20, 3000


def _sharded_text_dataset():
    """20 parquet shards of 3,000 rows of 24 words (24 tokens for the tiny tokenizer)."""
    from hub_repos import commit, parquet
    from hub_server import Repo

    repo = Repo("dataset", False)
    for shard in range(SHARDS):
        path = f"data/train-{shard:05d}-of-{SHARDS:05d}.parquet"
        texts = [" ".join(f"w{(shard * 7919 + i * 31 + j) % 120}" for j in range(24)) for i in range(ROWS_PER_SHARD)]
        repo.files[path] = parquet({"text": texts})
        repo.lfs.add(path)
    return commit(repo)


@pytest.fixture
def sharded_hub(tmp_path):
    from hub_server import HubServer

    server = HubServer().start()
    server.repos[("dataset", "tester/sharded")] = _sharded_text_dataset()
    yield server
    server.stop()
    assert server.unknown == [], f"requests the loopback hub did not understand: {server.unknown}"


# The bound on calibration samples skipped, lowered so that a tiny dataset shows it: at
# its real value the 60,000 rows here are less than the bound allows.
_EVAL = """
import sys
import snows_hf.workflow.evaluating
snows_hf.workflow.evaluating.EVAL_SKIP_SAMPLES = {bound}
from snows_hf.cli import main
sys.exit(main({argv!r}))
"""


def _eval(argv: list[str], server, tmp_path, bound: int = 64) -> subprocess.CompletedProcess:
    from hub_server import TOKEN

    env = dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_TOKEN=TOKEN,
               PYTHONPATH=str(Path(snows_hf.__file__).parents[1]))  # the snows_hf under test, wherever it is
    return subprocess.run([sys.executable, "-c", _EVAL.format(bound=bound, argv=["eval", *argv])], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path, check=False)


def test_a_recipe_asking_for_the_whole_split_and_every_row_reads_a_few_shards(sharded_hub, llama_dir, tmp_path):
    _recipe(llama_dir, {"dataset": "tester/sharded", "split": "train", "num_samples": 10**9, "seq_len": 24,
                        "eval_samples": 10**6, "seed": 0, "streaming": False})
    before = _snapshot(llama_dir)
    result = _eval([str(llama_dir), "--json", "figures.json"], sharded_hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    sent = sharded_hub.bytes_sent("dataset", "tester/sharded")
    total = sum(len(data) for data in sharded_hub.repos[("dataset", "tester/sharded")].files.values())
    assert sum(sent.values()) <= total / 4, f"{sum(sent.values())} of {total} bytes read, from {len(sent)} files"
    assert figures["data"]["streaming"] is True and figures["samples"] == 128
    # at most 64 samples of 512 tokens are skipped: 1,365 rows of 24 tokens
    assert len(figures["data"]["calibration_rows"]) == 64 * 512 // 24
    line = next(line for line in result.stderr.splitlines() if "evaluation data from" in line)
    assert "dataset 'tester/sharded', split 'train'" in line, line
    assert "recipe asked streaming: false; streaming anyway" in line, line
    assert "1000000000 calibration samples" in line and "--num-samples" in line, line
    assert "recipe asked for 1000000 held-out samples: evaluating 128" in line, line
    assert _snapshot(llama_dir) == before


def test_the_users_own_no_streaming_downloads_the_split(sharded_hub, llama_dir, tmp_path):
    _recipe(llama_dir, {"dataset": "tester/sharded", "num_samples": 4, "seq_len": 24, "eval_samples": 4})
    result = _eval([str(llama_dir), "--no-streaming", "--json", "figures.json", "--quiet"], sharded_hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["data"]["streaming"] is False and figures["data"]["rows_in_split"] == SHARDS * ROWS_PER_SHARD
    assert len(sharded_hub.bytes_sent("dataset", "tester/sharded")) == SHARDS

    sharded_hub.sent.clear()
    result = _eval([str(llama_dir), "--streaming", "--json", "figures.json", "--quiet"], sharded_hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "figures.json").read_text())["data"]["streaming"] is True
    assert 0 < len(sharded_hub.bytes_sent("dataset", "tester/sharded")) < SHARDS / 4
