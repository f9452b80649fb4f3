"""Which modules count as window operations: the adapter's fields, with the class-name
rules as the default for every family."""

import pytest
import torch
from torch import nn

from snows_hf.adapters import ADAPTERS, IDENTITY_CLASSES, OPERATION_CLASSES, Adapter, BlockList
from snows_hf.blocks import BlockCall
from snows_hf.windows import WindowRunner, is_operation


class Mixer(nn.Module):
    """A module with a child whose output is not its child's."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return 2 * self.lin(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = Mixer()

    def forward(self, x):
        return self.mix(x) + x


class SkipPath(nn.Module):
    def forward(self, x):
        return x


def test_every_family_keeps_the_default_rules():
    assert OPERATION_CLASSES == ("Attention",) and IDENTITY_CLASSES == ("DropPath",)
    assert all(a.operation_classes == OPERATION_CLASSES and a.identity_classes == IDENTITY_CLASSES
               for a in ADAPTERS.values())


@pytest.mark.parametrize("module, adapter, expected", [
    (nn.Linear(2, 2), None, True),
    (nn.Dropout(), None, False),
    (nn.Identity(), None, False),
    (type("DropPath", (nn.Module,), {})(), None, False),
    (type("SelfAttention", (Mixer,), {})(), None, True),
    (Mixer(), None, False),
    (Mixer(), Adapter("toy", blocks="layers", operation_classes=("Mixer",)), True),
    (SkipPath(), None, True),
    (SkipPath(), Adapter("toy", blocks="layers", identity_classes=("Path",)), False),
])
def test_operation_rules(module, adapter, expected):
    assert is_operation(module, adapter) is expected


@pytest.mark.parametrize("adapter, names", [
    (None, ["0.mix.lin", "0"]),
    (Adapter("toy", blocks="layers", operation_classes=("Mixer",)), ["0.mix.lin", "0.mix", "0"]),
])
def test_the_window_counts_what_the_blocks_adapter_says(adapter, names):
    torch.manual_seed(0)
    block = Block()
    blocks = BlockList("layers", nn.ModuleList([block]), ["layers.0"], adapter=adapter)
    call = BlockCall((torch.randn(3, 4),), {})
    with WindowRunner(blocks, 0, "mix.lin.weight") as runner:
        window = runner.trace(call, block.mix.lin.weight, k=5)
    assert window.names() == names
