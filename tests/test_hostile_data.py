"""Hostile and unlucky data (issue 30): small files that grow, and messages that mislead.

A refusal is one ``snows-hf: error:`` line, exit code 1, no traceback and the folder tree
as it was. Data that is legal but large is read within bounds: the tests look at what the
tokenizer and the image decoder were handed, not at timings.
"""

import hashlib
import io
import json
import logging
import random
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer, tiny_vit

from snows_hf.cli import main
from snows_hf.data import (CalibrationConfig, SplitRows, load_dataset_split, match_class_names, order, prepare_data,
                           preparation, sources)

WORDS = " ".join(f"w{i % 120}" for i in range(1000))  # 4,890 characters, 1,000 tokens of the tiny tokenizer


def _tree(root="."):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(Path(root).rglob("*"))}


def _png(path: Path, size, mode="L"):
    """A uniform image: megapixels on disk in a few KB."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 90).save(path)
    return path


def _jsonl(path: str, rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))


def _struct_parquet(path: str, payloads) -> None:
    """A parquet file whose image column is a plain struct {bytes, path}: no datasets metadata says Image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in payloads],
                             "label": [i % 3 for i in range(len(payloads))]}), path)


def _small_png_bytes(colour: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (colour, 20, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _setup() -> None:
    _jsonl("mixed.jsonl", [{"text": WORDS}, {"text": 5}, {"text": WORDS}])
    _jsonl("lists.jsonl", [{"text": ["w1 w2", "w3"]}] * 4)
    Path("numbers.csv").write_text("text\n" + "".join(f"{i}\n" for i in range(8)))
    _struct_parquet("not-images.parquet", [b"not an image"] * 6)
    for i in range(2):
        _png(Path(f"huge/cat/{i}.png"), (6000, 6000))  # 36 megapixels each, over the bound
    for i in range(60):
        Path("many", f"{i}.txt").parent.mkdir(exist_ok=True)
        Path("many", f"{i}.txt").write_text("w1 w2 w3\n")
    _jsonl("outside/private.jsonl", [{"text": WORDS}])  # what a dataset folder's card must not reach
    config = "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {}\n"
    for folder, card, text in (("escape", "README.md", "---\n" + config.format("../outside/*.jsonl") + "---\n# data\n"),
                               ("absolute", ".huggingface.yaml", config.format(Path("outside").resolve() / "*.jsonl")),
                               ("bomb", "README.md", "---\na: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                                                     "c: [*b, *b, *b, *b, *b, *b, *b, *b]\n---\n")):
        _jsonl(f"{folder}/train.jsonl", [{"text": WORDS}] * 3)
        Path(folder, card).write_text(text)


HOSTILE = [
    pytest.param(["prune", "{llama}", "--dataset", "mixed.jsonl"],
                 "text column 'text' holds int, not strings (row 1; its values are of mixed types)", id="mixed-type-text"),
    pytest.param(["prune", "{llama}", "--dataset", "numbers.csv"],
                 "no text column found in the dataset: column 'text' holds int64, not strings", id="numbers-as-text"),
    pytest.param(["prune", "{llama}", "--dataset", "lists.jsonl"],
                 "no text column found in the dataset: column 'text' holds lists, not strings", id="lists-as-text"),
    pytest.param(["prune", "{vit}", "--dataset", "not-images.parquet"],
                 "no image in column 'image' could be decoded (6 tried)", id="undeclared-struct-of-garbage"),
    pytest.param(["prune", "{vit}", "--dataset", "huge"],
                 "no image in column 'image' could be used (2 tried: 2 over the bound of 33,554,432 pixels)",
                 id="images-over-the-pixel-bound"),
    pytest.param(["prune", "{llama}", "--dataset", "/"], "dataset path '/' is the root of the file system", id="dataset-root"),
    pytest.param(["eval", "{llama}", "--dataset", "//"], "dataset path '//' is the root of the file system", id="eval-dataset-root"),
    pytest.param(["prune", "{llama}", "--dataset", "many"], "dataset folder 'many' holds more than 50 files and folders",
                 id="folder-over-the-walk-bound"),
    pytest.param(["prune", "{llama}", "--dataset", "escape"],
                 "dataset folder 'escape': README.md names data files outside the folder ('../outside/*.jsonl')",
                 id="card-reaches-out-of-the-folder"),
    pytest.param(["eval", "{llama}", "--dataset", "absolute"], "dataset folder 'absolute': .huggingface.yaml names data "
                 "files outside the folder", id="card-names-an-absolute-path"),
    pytest.param(["prune", "{llama}", "--dataset", "bomb"], "dataset folder 'bomb': README.md uses the YAML alias *a (line 3)",
                 id="card-alias-bomb"),
]


@pytest.mark.parametrize("argv, message", HOSTILE)
def test_hostile_data_is_one_line_and_nothing_is_written(argv, message, vit_dir, llama_dir, monkeypatch, capsys):
    _setup()
    monkeypatch.setattr(sources, "MAX_FOLDER_ENTRIES", 50, raising=False)  # the walk's bound, small enough to test
    before = _tree()
    argv = [a.format(vit=vit_dir, llama=llama_dir) for a in argv]
    extra = ["--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--output-dir", "out"] if argv[0] == "prune" else []
    code = main(argv + extra + ["--num-samples", "2"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert message in errors[0], errors[0]
    assert _tree() == before


def test_the_folder_walk_stops_at_its_bound_before_datasets_reads_anything(monkeypatch, tmp_path):
    _setup()
    monkeypatch.setattr(sources, "MAX_FOLDER_ENTRIES", 50)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets walked the folder"))
    with pytest.raises(ValueError, match=r"^dataset folder 'many' holds more than 50 files and folders"):
        load_dataset_split(CalibrationConfig(dataset="many"))


def test_the_walk_bound_is_generous_and_ordinary_folders_load():
    assert 10_000 <= sources.MAX_FOLDER_ENTRIES <= 1_000_000
    Path("d").mkdir()
    (Path("d") / "train.jsonl").write_text(json.dumps({"text": WORDS}) + "\n")
    assert load_dataset_split(CalibrationConfig(dataset="d")).size == 1


# ---------------------------------------------------------------------------- text that grows


class _Recording:
    """The tiny tokenizer, keeping the length of every text it is handed."""

    def __init__(self):
        self.inner, self.lengths = tiny_tokenizer(), []

    def __call__(self, text, *args, **kwargs):
        self.lengths += [len(t) for t in ([text] if isinstance(text, str) else text)]
        return self.inner(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _long_rows(n=4, chars=4_000_000):
    """``n`` rows of ``chars`` characters each, of words the tiny tokenizer knows."""
    return [(f"w{r} " + WORDS + " ") * (chars // (len(WORDS) + 5)) for r in range(n)]


def _source(kind, texts, tmp_path):
    if kind == "parquet":
        tmp_path.mkdir(exist_ok=True)
        datasets.Dataset.from_dict({"text": texts, "other": ["x" * 1000] * len(texts)}).to_parquet(str(tmp_path / "d.parquet"))
        return load_dataset_split(CalibrationConfig(dataset=str(tmp_path / "d.parquet")))
    if kind == "in-memory":
        return datasets.Dataset.from_dict({"text": texts})
    return SplitRows(datasets.IterableDataset.from_generator(lambda: ({"text": t} for t in texts)), seed=0)


@pytest.mark.parametrize("kind", ["parquet", "in-memory", "streamed"])
def test_long_rows_are_cut_to_what_can_still_be_used_before_tokenizing(kind, tmp_path):
    texts = _long_rows()
    tokenizer = _Recording()
    cfg = CalibrationConfig(num_samples=3, seq_len=16, seed=0)
    data = prepare_data(_source(kind, texts, tmp_path), cfg, tiny_llama(), tokenizer, eval_samples=2)
    need = 3 * 16
    assert tokenizer.lengths and max(tokenizer.lengths) <= need * preparation.CHARS_PER_TOKEN, max(tokenizer.lengths)
    assert data.calibration["input_ids"].shape == (3, 16) and data.evaluation.inputs["input_ids"].shape == (2, 16)
    # the same tokens as the whole rows would give: the cut lies far beyond the last token used
    short = [t[:20_000] for t in texts]
    same = prepare_data(_source(kind, short, tmp_path / "short"), cfg, tiny_llama(), tiny_tokenizer(), eval_samples=2)
    assert torch.equal(same.calibration["input_ids"], data.calibration["input_ids"])
    assert torch.equal(same.evaluation.inputs["input_ids"], data.evaluation.inputs["input_ids"])


def test_a_non_string_in_a_streamed_text_column_names_its_row():
    def rows():
        yield from ({"text": WORDS} for _ in range(3))
        yield {"text": 7}

    split = SplitRows(datasets.IterableDataset.from_generator(rows), seed=0)
    with pytest.raises(ValueError, match=r"^text column 'text' holds int, not strings \(row 3 of shard 0\)$"):
        prepare_data(split, CalibrationConfig(num_samples=40, seq_len=128), tiny_llama(), tiny_tokenizer())


def test_long_rows_for_a_classifier_are_cut_at_the_sequence_length():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                     intermediate_size=64, vocab_size=128, num_labels=2)).eval()
    texts = _long_rows(n=6, chars=1_000_000)
    tokenizer = _Recording()
    split = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(6)]})
    data = prepare_data(split, CalibrationConfig(num_samples=2, seq_len=16), model, tokenizer, eval_samples=3)
    assert max(tokenizer.lengths) <= 2 * 16 * preparation.CHARS_PER_TOKEN
    assert data.evaluation.inputs["input_ids"].shape == (3, 16)


def test_a_file_of_long_rows_runs_from_the_command_line(llama_dir, capsys):
    datasets.Dataset.from_dict({"text": _long_rows()}).to_parquet("long.parquet")
    assert main(["prune", str(llama_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "long.parquet",
                 "--num-samples", "4", "--seq-len", "16", "--eval-samples", "2", "--output-dir", "out", "--quiet"]) == 0
    report = json.loads(Path("out/report.json").read_text())
    assert report["evaluation"]["samples"] == 2


def test_a_label_that_is_megabytes_long_stays_out_of_the_log_line(caplog):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=128,
                        num_labels=2, id2label={0: "sport", 1: "tech"}, label2id={"sport": 0, "tech": 1})
    model = BertForSequenceClassification(config).eval()
    split = datasets.Dataset.from_dict({"text": [WORDS] * 8, "label": ["sport", "x" * 3_000_000] * 4})
    with caplog.at_level(logging.WARNING):
        data = prepare_data(split, CalibrationConfig(num_samples=2, seq_len=16), model, tiny_tokenizer(), eval_samples=6)
    assert set(data.evaluation.labels.tolist()) == {-1, 0}
    assert data.source["labels"].startswith("matched by name: ") and len(data.source["labels"]) < 400
    assert caplog.records and max(len(r.getMessage()) for r in caplog.records) < 400


# ---------------------------------------------------------------------------- the shuffle buffer


def _buffer_before_the_byte_bound(items, size, rng):
    """The shuffle buffer as it was before it counted bytes: rows recorded by earlier runs
    (``eval`` finds their held-out rows again) must come out in this order."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_buffer_order_is_unchanged_below_its_byte_bound(seed):
    items = [(i, {"text": "w1 w2"}) for i in range(5000)]
    expected = list(_buffer_before_the_byte_bound(iter(items), 1000, random.Random(seed)))
    assert list(order._shuffled(iter(items), 1000, random.Random(seed))) == expected


def test_the_shuffle_buffer_of_a_stream_holds_a_bounded_number_of_bytes(monkeypatch):
    """Image bytes cannot be cut: the buffer holds fewer rows when rows are large."""
    monkeypatch.setattr(order, "SHUFFLE_BUFFER_BYTES", 2_000_000)  # where SplitRows reads it
    row_bytes, pulled = 100_000, []

    def rows():
        for i in range(400):
            pulled.append(i)
            yield {"image": {"bytes": bytes([i % 256]) * row_bytes, "path": None}, "unused": "u" * 1_000_000}

    split = SplitRows(datasets.IterableDataset.from_generator(rows), seed=0).bounded({"image": None})
    held, seen = [], []
    for row_id, row in split:
        held.append(len(pulled) - len(seen) - 1)
        seen.append(row_id)
        assert set(row) == {"image"}  # unused columns are dropped as rows are read
    assert sorted(offset for _, offset in seen) == list(range(400))
    assert max(held) * row_bytes <= 2_000_000 + row_bytes and max(held) >= 10  # bounded, and still a buffer
    assert split.describe()["shuffle_buffer_bytes"] == 2_000_000


# ---------------------------------------------------------------------------- images that grow


def _vit_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 32, "width": 32})


class _Seen:
    """The processor, keeping the size of every image it is handed."""

    def __init__(self):
        self.inner, self.sizes = _vit_processor(), []

    def __call__(self, images, **kwargs):
        self.sizes += [image.size for image in images]
        return self.inner(images=images, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_images_are_decoded_no_larger_than_the_processor_needs(tmp_path, monkeypatch, caplog):
    from PIL import Image, ImageFile

    root = tmp_path / "imgs"
    _png(root / "cat" / "big.png", (4000, 3000), "RGB")  # 12 megapixels: decoded, then reduced
    _png(root / "cat" / "huge.png", (6000, 6000))  # over the bound: never decoded
    (root / "dog").mkdir()
    Image.new("RGB", (8000, 6000), (10, 200, 30)).save(root / "dog" / "camera.jpg")  # 48 megapixels, drafted
    for label in ("cat", "dog"):
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 40, 9, 9)).save(root / label / f"{i}.png")
    decoded = []
    load = ImageFile.ImageFile.load

    def recording_load(self):
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    processor = _Seen()
    cfg = CalibrationConfig(dataset=str(root), num_samples=4)
    with caplog.at_level(logging.WARNING):
        data = prepare_data(load_dataset_split(cfg), cfg, tiny_vit(), processor, eval_samples=4)
    assert data.calibration["pixel_values"].shape == (4, 3, 32, 32) and len(data.evaluation) == 4
    assert max(w * h for w, h in decoded) <= 4000 * 3000 and (6000, 6000) not in decoded
    assert (1000, 750) in decoded  # the camera JPEG, decoded at an eighth of its size
    assert max(min(size) for size in processor.sizes) < 4 * 32  # twice to four times what the processor makes
    assert data.source["skipped_images"] == 1
    assert f"skipped 1 image: 1 over the bound of {preparation.MAX_IMAGE_PIXELS:,} pixels" in caplog.text


def test_small_images_give_the_same_pixels_as_before(tmp_path):
    """Images within the bound meet the processor as they are."""
    from PIL import Image

    root = tmp_path / "imgs" / "cat"
    root.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        Image.fromarray((torch.rand(40 + i, 30, 3, generator=g) * 255).to(torch.uint8).numpy()).save(root / f"{i}.png")
    cfg = CalibrationConfig(dataset=str(root.parent), num_samples=5, seed=2)
    split = load_dataset_split(cfg)
    data = prepare_data(split, cfg, tiny_vit(), _vit_processor())
    images = [split.data[r]["image"].convert("RGB") for r in data.source["calibration_rows"]]  # decoded whole, by datasets
    assert torch.equal(data.calibration["pixel_values"], _vit_processor()(images=images, return_tensors="pt")["pixel_values"])


def test_an_undeclared_image_struct_in_parquet_is_read_as_images(vit_dir, capsys):
    _struct_parquet("struct.parquet", [_small_png_bytes(c) for c in range(0, 240, 20)])
    assert main(["prune", str(vit_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "struct.parquet",
                 "--num-samples", "4", "--eval-samples", "4", "--output-dir", "out", "--quiet"]) == 0, capsys.readouterr().err
    report = json.loads(Path("out/report.json").read_text())
    assert len(report["data"]["calibration_rows"]) == 4 and report["evaluation"]["samples"] == 4


# ---------------------------------------------------------------------------- class names


def test_class_names_that_collide_once_normalised_are_matched_to_nothing_with_a_warning(caplog):
    model = {0: "tench, Tinca tinca", 1: "golf ball", 2: "church"}
    with caplog.at_level(logging.WARNING):
        found = match_class_names(["Golf Ball", "golf_ball", "tench", "church"], model)
    assert found == {"tench": 0, "church": 2}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'Golf Ball' and 'golf_ball'" in lines[0] and "neither" in lines[0], lines


def test_list_labels_are_kept_as_short_text(caplog):
    """A multi-label column of long lists: each held-out row keeps a name's worth of its label."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=128,
                        num_labels=2, id2label={0: "sport", 1: "tech"}, label2id={"sport": 0, "tech": 1})
    model = BertForSequenceClassification(config).eval()
    split = datasets.Dataset.from_dict({"text": [WORDS] * 8, "labels": [[i] * 200_000 for i in range(8)]})
    with caplog.at_level(logging.WARNING):
        data = prepare_data(split, CalibrationConfig(num_samples=2, seq_len=16), model, tiny_tokenizer(), eval_samples=6)
    assert data.evaluation.labels is None and data.source["labels"].startswith("no label name matched")
    assert len(data.source["labels"]) < 400 and max(len(r.getMessage()) for r in caplog.records) < 400


def test_an_image_path_that_is_not_a_file_is_skipped_not_waited_on(tmp_path):
    """A row may name any path: a pipe would block the run for ever."""
    import os

    os.mkfifo(tmp_path / "pipe.png")
    good = [{"bytes": _small_png_bytes(c), "path": None} for c in range(0, 200, 40)]
    features = datasets.Features({"image": datasets.Image(decode=False)})
    split = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": str(tmp_path / "pipe.png")}] + good}, features=features)
    data = prepare_data(split, CalibrationConfig(num_samples=5), tiny_vit(), _vit_processor())
    assert data.calibration["pixel_values"].shape == (5, 3, 32, 32) and data.source["skipped_images"] == 1
