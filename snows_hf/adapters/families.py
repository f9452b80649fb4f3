"""Per-family entries. Paths are relative to ``model.base_model`` (transformers 5 names).

Decoder and encoder stacks pass the same attention inputs to every block of one kind
(layers whose ``config.layer_types`` differ get their own kind's); vision stacks with
stages (Swin, ConvNeXt) are pruned stage by stage, since their stages downsample between
blocks; ResNet's stages only chain their residual blocks, so those are the blocks.
Families without an entry prune every Linear, Conv1D and dense Conv2d of their blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import BlockCall
from .base import Adapter, register_adapter


def _swin_next_call(stage: nn.Module, call: BlockCall, hidden: torch.Tensor) -> BlockCall:
    """A Swin stage that downsamples halves the resolution the next stage is told about."""
    height, width = call.args[1]
    if getattr(stage, "downsample", None) is not None:
        height, width = (height + 1) // 2, (width + 1) // 2
    return BlockCall((hidden, (height, width), *call.args[2:]), call.kwargs)


for _adapter in (
    # vision transformers
    Adapter("vit", blocks="layers"),
    Adapter("deit", blocks="layers"),
    Adapter("swin", blocks="encoder.layers", next_call=_swin_next_call),
    # convolutional networks: pointwise Linear layers for ConvNeXt (its depthwise 7x7 conv
    # has one input channel per group, where N:M means nothing), every conv for ResNet
    Adapter("convnext", blocks="encoder.stages"),
    Adapter("resnet", blocks="encoder.stages.*.layers", target_types=("conv2d",)),
    # encoders
    Adapter("bert", blocks="encoder.layer"),
    Adapter("roberta", blocks="encoder.layer"),
    Adapter("distilbert", blocks="transformer.layer"),
    # decoders (GPT-2 stores Conv1D weights transposed)
    Adapter("gpt2", blocks="h"),
    Adapter("opt", blocks="decoder.layers"),
    Adapter("llama", blocks="layers"),
    Adapter("mistral", blocks="layers"),
    Adapter("qwen2", blocks="layers"),
    Adapter("qwen3", blocks="layers"),
):
    register_adapter(_adapter)
