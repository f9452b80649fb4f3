"""Fashion-MNIST and small Hugging Face models trained on it, cached outside git.

Data: ``apt-get install dataset-fashion-mnist`` (files under /usr/share/datasets).
Models are trained once on the CPU and saved under ``$SNOWS_HF_CACHE`` (default
``~/.cache/snows-hf``), so each benchmark run prunes the same trained network.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CACHE = Path(os.environ.get("SNOWS_HF_CACHE", Path.home() / ".cache" / "snows-hf"))
MEAN, STD = 0.2860, 0.3530


def _idx(name: str) -> np.ndarray:
    path = DATA / name
    if not path.exists():
        raise SystemExit(f"missing {path}: apt-get install dataset-fashion-mnist")
    with gzip.open(path) as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``(N, 1, 28, 28)`` and labels for ``train`` or ``test``."""
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(_idx(f"{prefix}-images-idx3-ubyte.gz").copy()).float().div(255)
    labels = torch.from_numpy(_idx(f"{prefix}-labels-idx1-ubyte.gz").copy()).long()
    return ((images - MEAN) / STD).unsqueeze(1), labels


def vit_config():
    from transformers import ViTConfig

    return ViTConfig(
        image_size=28, patch_size=4, num_channels=1, hidden_size=96, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=384, num_labels=10,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def resnet_config():
    from transformers import ResNetConfig

    return ResNetConfig(
        num_channels=1, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
        layer_type="basic", downsample_in_first_stage=False, num_labels=10,
    )


def trained_vit(epochs: int = 8, seed: int = 0):
    """A 4-block ViT trained on Fashion-MNIST (cached; about 5 CPU minutes the first time)."""
    from transformers import ViTForImageClassification

    return _trained(ViTForImageClassification, vit_config(), f"fmnist-vit-e{epochs}-s{seed}", epochs, seed)


def trained_resnet(epochs: int = 4, seed: int = 0):
    """A ResNet (basic blocks, 5 of them, 32-256 channels) trained on Fashion-MNIST (cached)."""
    from transformers import ResNetForImageClassification

    return _trained(ResNetForImageClassification, resnet_config(), f"fmnist-resnet-e{epochs}-s{seed}", epochs, seed)


def _trained(cls, config, name: str, epochs: int, seed: int):
    path = CACHE / name
    if (path / "config.json").exists():
        return cls.from_pretrained(path).eval()
    torch.manual_seed(seed)
    model = cls(config)
    x, y = load("train")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - 127, 128):
            idx = perm[i : i + 128]
            loss = model(pixel_values=x[idx], labels=y[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return model


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of an image classifier."""
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(pixel_values=x[i : i + batch]).logits.argmax(-1) == y[i : i + batch]).sum().item()
    return correct / len(x)


def benchmark_data(num_samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(calibration images, test images, test labels)``: a seeded draw of ``num_samples``
    training images, and the whole test set. Also pins torch to this machine's 2 threads."""
    torch.set_num_threads(2)
    x_train, _ = load("train")
    x_test, y_test = load("test")
    g = torch.Generator().manual_seed(seed)
    return x_train[torch.randperm(len(x_train), generator=g)[:num_samples]], x_test, y_test
