"""Hub repos for the loopback Hub (tests/hub_server.py), built offline: stand-ins for the
default datasets' layouts and a tiny model named like a real one. Used by the tests and by
benchmarks/headline_offline.py."""

from __future__ import annotations

import io
from pathlib import Path

from hub_server import Repo


def commit(repo: Repo) -> Repo:
    repo.commits.append({"id": "1" * 40, "title": "upload", "message": ""})
    return repo


def parquet(columns: dict, row_group_size: int = 250) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


IMAGENETTE = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
              "gas pump", "golf ball", "parachute"]


def imagenette_like(per_class: int = 3) -> Repo:
    """The default image dataset's layout: a ``320px`` configuration of parquet shards whose
    ``label`` is a ClassLabel with Imagenette's class names."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    images, labels = [], []
    for label in range(len(IMAGENETTE)):
        for _ in range(per_class):
            buffer = io.BytesIO()
            Image.fromarray((torch.rand(24, 24, 3, generator=g) * 255).to(torch.uint8).numpy()).save(buffer, "PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
            labels.append(label)
    names = "".join(f"          '{i}': {name}\n" for i, name in enumerate(IMAGENETTE))
    repo = Repo("dataset", False)
    repo.files["README.md"] = (
        "---\ndataset_info:\n- config_name: 320px\n  features:\n  - name: image\n    dtype: image\n  - name: label\n"
        f"    dtype:\n      class_label:\n        names:\n{names}"
        "configs:\n- config_name: 320px\n  data_files:\n  - split: validation\n    path: 320px/validation-*.parquet\n---\n"
    ).encode()
    half = len(images) // 2
    for shard, part in enumerate((slice(0, half), slice(half, None))):
        path = f"320px/validation-{shard:05d}-of-00002.parquet"
        repo.files[path] = parquet({"image": images[part], "label": labels[part]}, row_group_size=8)
        repo.lfs.add(path)
    return commit(repo)


def vit_repo(folder: Path) -> Repo:
    """A tiny ViT whose classes are named like ImageNet's: two of them are Imagenette's."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    id2label = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 2: "golf ball"}
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=68, image_size=32,
                       patch_size=8, num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    repo = Repo("model", False)
    for path in folder.iterdir():
        repo.files[path.name] = path.read_bytes()
    repo.lfs.add("model.safetensors")
    return commit(repo)


