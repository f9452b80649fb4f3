"""Hub datasets streamed through the real ``datasets``/``huggingface_hub`` clients from the
loopback Hub (tests/hub_server.py): only the rows a run uses are read, in one seeded order,
and a run with no dataset calibrates on the modality's default dataset."""

import gzip
import json
import os
import subprocess
import sys

import pytest
from hub_repos import commit, imagenette_like, parquet, vit_repo
from hub_server import TOKEN, HubServer, Repo

SHARDS, ROWS_PER_SHARD = 20, 3000


def _text_rows(shard: int, count: int) -> list[str]:
    return [" ".join(f"w{(shard * 7919 + i * 31 + j) % 120}" for j in range(24)) for i in range(count)]


def _sharded_text_dataset() -> Repo:
    """20 parquet shards of 3,000 rows, each row naming its shard and index."""
    repo = Repo("dataset", False)
    for shard in range(SHARDS):
        path = f"data/train-{shard:05d}-of-{SHARDS:05d}.parquet"
        repo.files[path] = parquet({"text": _text_rows(shard, ROWS_PER_SHARD),
                                     "origin": [shard * ROWS_PER_SHARD + i for i in range(ROWS_PER_SHARD)]})
        repo.lfs.add(path)
    return commit(repo)


def _c4_like() -> Repo:
    """The default text dataset's layout: an ``en`` configuration of gzipped JSON lines."""
    repo = Repo("dataset", False)
    repo.files["README.md"] = (
        "---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/c4-train.*.json.gz\n"
        "  - split: validation\n    path: en/c4-validation.*.json.gz\n---\n# C4 stand-in\n"
    ).encode()
    for shard in range(4):
        lines = "".join(json.dumps({"text": t, "url": "u", "timestamp": "t"}) + "\n" for t in _text_rows(shard, 400))
        for split in ("train", "validation"):
            repo.files[f"en/c4-{split}.{shard:05d}-of-00004.json.gz"] = gzip.compress(lines.encode())
    return commit(repo)


@pytest.fixture
def hub(tmp_path):
    server = HubServer().start()
    yield server
    server.stop()
    assert server.unknown == [], f"requests the loopback hub did not understand: {server.unknown}"


def _env(server, tmp_path):
    return dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"),
                HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_TOKEN=TOKEN)


def _python(code: str, server, tmp_path) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_env(server, tmp_path), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _cli(args: list[str], server, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snows_hf", *args], capture_output=True, text=True,
                          env=_env(server, tmp_path), timeout=600, cwd=tmp_path)


_ROWS = """
import json
from transformers import AutoModelForCausalLM, AutoTokenizer
from snows_hf.data import CalibrationConfig, prepare_run_data
out = {{}}
for seed in {seeds}:
    cfg = CalibrationConfig(dataset="tester/sharded", num_samples=64, seq_len=24, eval_samples=16, seed=seed)
    model, tokenizer = AutoModelForCausalLM.from_pretrained({model!r}), AutoTokenizer.from_pretrained({model!r})
    data, _ = prepare_run_data(cfg, model, tokenizer, cfg.eval_samples)
    out.setdefault(seed, []).append({{k: data.source[k] for k in ("calibration_rows", "eval_rows", "streaming", "shards")}}
                                   | {{"ids": data.calibration["input_ids"].sum().item()}})
print(json.dumps(out))
"""


def test_streamed_calibration_reads_a_fraction_of_the_shards_in_a_seeded_order(hub, tmp_path, llama_dir):
    hub.repos[("dataset", "tester/sharded")] = repo = _sharded_text_dataset()
    first = json.loads(_python(_ROWS.format(model=str(llama_dir), seeds=(0,)), hub, tmp_path))["0"][0]
    total = sum(len(data) for data in repo.files.values())
    sent = hub.bytes_sent("dataset", "tester/sharded")
    assert sum(sent.values()) <= total / 4, f"{sum(sent.values())} of {total} bytes read, from {len(sent)} files"
    assert first["streaming"] is True and first["shards"] == SHARDS
    assert len(first["calibration_rows"]) == 64 and len(first["eval_rows"]) == 16  # 24-token rows: one each
    calib = {tuple(r) for r in first["calibration_rows"]}
    assert not calib & {tuple(r) for r in first["eval_rows"]}  # never overlapping

    runs = json.loads(_python(_ROWS.format(model=str(llama_dir), seeds=(0, 1)), hub, tmp_path))
    assert runs["0"][0] == first  # the same seed gives the same rows in another process
    assert {tuple(r) for r in runs["1"][0]["calibration_rows"]} != calib  # another seed, other rows


_LONG_ROW = """
import json
from transformers import AutoModelForCausalLM, AutoTokenizer
from snows_hf.data import CalibrationConfig, prepare_run_data
tokenizer, lengths = AutoTokenizer.from_pretrained({model!r}), []
class Recording:
    def __call__(self, text, *args, **kwargs):
        lengths.extend(len(t) for t in ([text] if isinstance(text, str) else text))
        return tokenizer(text, *args, **kwargs)
    def __getattr__(self, name):
        return getattr(tokenizer, name)
cfg = CalibrationConfig(dataset="tester/long-row", num_samples=4, seq_len=16, eval_samples=2)
data, _ = prepare_run_data(cfg, AutoModelForCausalLM.from_pretrained({model!r}), Recording(), cfg.eval_samples)
print(json.dumps({{"lengths": lengths, "rows": data.source["calibration_rows"] + data.source["eval_rows"],
                  "shape": list(data.calibration["input_ids"].shape)}}))
"""


def test_a_row_of_50_mb_in_a_small_hub_shard_is_cut_before_tokenizing(hub, tmp_path, llama_dir):
    """A shard of a few KB whose one row unpacks to 50 MB: the tokenizer sees what the run can use of it."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    words = " ".join(f"w{i % 120}" for i in range(240))
    pq.write_table(pa.table({"text": [words, (words + " ") * (50_000_000 // (len(words) + 1))]}), buffer, compression="zstd")
    assert len(buffer.getvalue()) < 100_000
    repo = Repo("dataset", False)
    repo.files["data/train-00000-of-00001.parquet"] = buffer.getvalue()
    hub.repos[("dataset", "tester/long-row")] = commit(repo)
    out = json.loads(_python(_LONG_ROW.format(model=str(llama_dir)), hub, tmp_path).splitlines()[-1])
    from snows_hf.data import CHARS_PER_TOKEN

    assert [0, 1] in out["rows"] and out["shape"] == [4, 16]  # the long row was read, and used
    assert max(out["lengths"]) <= 4 * 16 * CHARS_PER_TOKEN


def test_a_hub_dataset_card_with_a_yaml_alias_is_one_line_before_datasets_expands_it(hub, tmp_path, llama_dir):
    repo = Repo("dataset", False)
    repo.files["README.md"] = (b"---\na: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                               b"c: [*b, *b, *b, *b, *b, *b, *b, *b]\n---\n# a card\n")
    repo.files["data/train-00000-of-00001.parquet"] = parquet({"text": _text_rows(0, 50)})
    hub.repos[("dataset", "tester/bomb")] = commit(repo)
    result = _cli(["prune", str(llama_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "tester/bomb",
                   "--num-samples", "2", "--seq-len", "16", "--output-dir", "out"], hub, tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("snows-hf: error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Hub dataset 'tester/bomb': README.md uses the YAML alias *a (line 3)" in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


def test_no_dataset_calibrates_on_the_default_text_dataset_streamed(hub, tmp_path, llama_dir):
    hub.repos[("dataset", "allenai/c4")] = repo = _c4_like()
    result = _cli(["prune", str(llama_dir), "--sparsity", "2:4", "--num-samples", "16", "--seq-len", "16",
                   "--eval-samples", "8", "--output-dir", "out"], hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no dataset given: calibrating on allenai/c4 (en, split train, streamed)" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["dataset"] == "allenai/c4" and report["data"]["streaming"] is True
    assert report["evaluation"]["samples"] == 8 and "perplexity" in report["evaluation"]["pruned"]
    sent = hub.bytes_sent("dataset", "allenai/c4")
    assert sent and not [path for path in sent if "validation" in path]  # the other split is never read
    recipe = (tmp_path / "out" / "recipe.yaml").read_text()
    assert "dataset: allenai/c4" in recipe and "dataset_config: en" in recipe
    assert repo.files  # served, not consumed

    # eval remembers: the same held-out rows, with no data flags
    evaluated = _cli(["eval", "out", "--json", "eval.json"], hub, tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert figures["data"]["eval_rows"] == report["data"]["eval_rows"]
    assert figures["model"]["perplexity"] == pytest.approx(report["evaluation"]["pruned"]["perplexity"], rel=1e-4)


def test_missing_split_and_config_are_one_line(hub, tmp_path, llama_dir):
    hub.repos[("dataset", "allenai/c4")] = _c4_like()
    for flags, expected in ((["--split", "test"], "has no split 'test'"),
                            (["--dataset-config", "fr"], "has no configuration 'fr'")):
        result = _cli(["prune", str(llama_dir), "--sparsity", "2:4", "--dataset", "allenai/c4", *flags], hub, tmp_path)
        errors = [line for line in result.stderr.splitlines() if line.startswith("snows-hf: error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
        assert expected in errors[0] and "--dataset PATH" in errors[0], errors[0]
    assert not any(p.name.endswith("pruned-2of4") for p in tmp_path.iterdir())  # nothing written


def test_a_model_repo_with_other_frameworks_weights_fetches_only_safetensors(hub, tmp_path, llama_dir):
    repo = Repo("model", False)
    for path in llama_dir.iterdir():
        repo.files[path.name] = path.read_bytes()
    for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"):
        repo.files[name] = b"\0" * 4096
    repo.lfs.update(n for n in repo.files if n.endswith((".safetensors", ".bin", ".h5", ".msgpack")))
    hub.repos[("model", "tester/tiny-llama")] = commit(repo)
    result = _cli(["prune", "tester/tiny-llama", "--sparsity", "2:4", "--dataset", "random", "--method", "mask-only", "--mask", "magnitude",
                   "--num-samples", "4", "--seq-len", "16", "--output-dir", "out"], hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    fetched = hub.bytes_sent("model", "tester/tiny-llama")
    assert "model.safetensors" in fetched
    assert not {"pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"} & set(fetched), fetched


def test_headline_command_takes_the_bundled_recipe_and_matches_labels_by_name(hub, tmp_path):
    hub.repos[("model", "google/vit-base-patch16-224")] = vit_repo(tmp_path / "hub-vit")
    hub.repos[("dataset", "frgfm/imagenette")] = imagenette_like()
    result = _cli(["prune", "google/vit-base-patch16-224", "--sparsity", "2:4", "--num-samples", "6",
                   "--eval-samples", "24", "--batch-size", "3", "--output-dir", "out"], hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is the model of the bundled recipe vit-base-patch16-224-2of4: it is the base of this run" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    data = report["data"]
    assert data["dataset"] == "frgfm/imagenette" and data["dataset_config"] == "320px" and data["streaming"] is True
    assert len(data["calibration_rows"]) == 6 and len(data["eval_rows"]) == 24
    # 24 held-out photos of 10 classes, 3 of each: the model names tench and golf ball only
    assert data["labels"].startswith("matched by name: ") and "English springer" in data["labels"]
    matched = int(data["labels"].split(": ")[1].split(" of ")[0])
    assert 0 < matched < 24
    pruned = report["evaluation"]["pruned"]
    assert "top1_accuracy" in pruned and "top1_agreement" in pruned
    assert "accuracy is measured on the" in result.stderr


def test_labels_by_name():
    from snows_hf.data import match_class_names

    model = {0: "tench, Tinca tinca", 1: "crane", 2: "crane", 3: "French horn, horn", 4: "chain saw, chainsaw"}
    assert match_class_names(["Tench", "crane", "horn", "chain_saw", "cat"], model) == {"Tench": 0, "horn": 3, "chain_saw": 4}


@pytest.mark.parametrize("values, names, id2label, expected, note", [
    ([0, 1, 2], None, None, [0, 1, 2], "indices taken as the model's"),
    ([0, 1], ["cat", "dog"], None, [0, 1], "indices taken as the model's"),  # unnamed model classes
    ([1, 0], ["dog", "cat"], {0: "cat", 1: "dog"}, [0, 1], "matched by name: 2 of 2"),  # same names, other order
    ([0, 1], ["cat", "bird"], {0: "cat", 1: "dog"}, [0, -1], "matched by name: 1 of 2 samples (not: bird)"),
    ([0, 1], ["fish", "bird"], {0: "cat", 1: "dog"}, None, "agreement only"),
])
def test_label_alignment(values, names, id2label, expected, note):
    import datasets
    from transformers import ViTConfig, ViTForImageClassification

    from snows_hf.data import SplitRows, class_indices

    features = datasets.Features({"label": datasets.ClassLabel(names=names) if names else datasets.Value("int64")})
    rows = SplitRows(datasets.Dataset.from_dict({"label": values}, features=features))
    extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    model = ViTForImageClassification(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=8, image_size=8, patch_size=4, num_labels=3 if not id2label else 2, **extra))
    source = {}
    labels = class_indices(values, "label", rows, model, "model", source)
    assert (labels.tolist() if labels is not None else None) == expected
    assert note in source["labels"]


def test_labels_outside_the_models_classes_are_refused():
    import datasets
    from transformers import ViTConfig, ViTForImageClassification

    from snows_hf.data import SplitRows, class_indices

    rows = SplitRows(datasets.Dataset.from_dict({"label": [0, 6]}))
    model = ViTForImageClassification(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=8, image_size=8, patch_size=4, num_labels=3))
    with pytest.raises(ValueError, match=r"labels in column 'label' \(6\) are outside the model's 3 classes"):
        class_indices([0, 6], "label", rows, model, "model", {})


def test_no_streaming_downloads_the_split_and_gives_a_row_order_of_its_own(hub, tmp_path, llama_dir):
    hub.repos[("dataset", "allenai/c4")] = _c4_like()
    result = _cli(["prune", str(llama_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "allenai/c4",
                   "--dataset-config", "en", "--no-streaming", "--num-samples", "4", "--seq-len", "16",
                   "--eval-samples", "4", "--output-dir", "out"], hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["streaming"] is False and report["data"]["rows_in_split"] == 1600
    assert all(isinstance(row, int) for row in report["data"]["calibration_rows"])
    assert "streaming: false" in (tmp_path / "out" / "recipe.yaml").read_text()
    sent = hub.bytes_sent("dataset", "allenai/c4")
    assert sum(1 for path in sent if "train" in path) == 4  # every train shard, and only the requested split


def test_a_streamed_dataset_with_no_usable_rows_is_one_line(hub, tmp_path, llama_dir):
    repo = Repo("dataset", False)
    repo.files["data/train-00000-of-00001.parquet"] = parquet({"text": ["", " ", ""]})
    hub.repos[("dataset", "tester/blank")] = commit(repo)
    result = _cli(["prune", str(llama_dir), "--sparsity", "2:4", "--dataset", "tester/blank", "--output-dir", "out"],
                  hub, tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("snows-hf: error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "fewer tokens than one sequence" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_gated_dataset_is_one_line_naming_it_and_the_way_around(hub, tmp_path, llama_dir):
    repo = _c4_like()
    repo.gated = True
    hub.repos[("dataset", "tester/gated")] = repo
    result = _cli(["prune", str(llama_dir), "--sparsity", "2:4", "--dataset", "tester/gated", "--dataset-config", "en",
                   "--output-dir", "out"], hub, tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("snows-hf: error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot read Hub dataset 'tester/gated': it is gated" in errors[0] and "--dataset PATH" in errors[0]
    assert not (tmp_path / "out").exists()
