"""Architecture knowledge as data: where a model's blocks are and what in them is pruned.

One :class:`Adapter` per ``config.model_type``, added by one :func:`register_adapter`
call. Models without an entry fall back to :func:`find_block_list`, which takes the
longest list of identical blocks it finds and says what it saw when it finds none, and
to :data:`FALLBACK_TARGET_TYPES`. Stacks whose ``config.layer_types`` mix block kinds
(sliding-window and full attention) keep each block's kind, so every block gets the
call arguments of its own kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..blocks import BlockCall, NextCall, default_next_call
from ..fields import SettingError, setting

try:  # GPT-2 style (in, out) weights
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always ships it today
    Conv1D = ()

_LAYOUT_BY_TYPE: tuple[tuple[type, str], ...] = ((nn.Linear, "linear"), (Conv1D, "conv1d"), (nn.Conv2d, "conv2d"))

#: what models without an adapter entry prune: every layout (grouped and depthwise
#: convolutions never, see :func:`block_targets`)
FALLBACK_TARGET_TYPES = ("linear", "conv1d", "conv2d")

#: class-name parts of the modules with children whose output counts as one operation of
#: a SNOWS window (a leaf module's always does): attention modules
OPERATION_CLASSES = ("Attention",)

#: class-name endings of the modules that are the identity in eval and so never an
#: operation of a window: stochastic depth
IDENTITY_CLASSES = ("DropPath",)


@dataclass(frozen=True)
class Adapter:
    """How to find and prune the blocks of one architecture family.

    Attributes:
        model_type: ``config.model_type`` this entry serves.
        blocks: dotted path of the block list, relative to ``model.base_model``. A ``*``
            part flattens nested lists (``encoder.stages.*.layers``: every residual block
            of every stage, in order), for stacks whose stages only chain their blocks.
        target_types: module types pruned by default inside each block.
        ignore: regular expressions over module names (relative to the block) never pruned.
        next_call: how one block's output becomes the next block's call, for blocks whose
            other arguments change along the stack (Swin's stage resolution); ``None``
            passes the same arguments with the new hidden states.
        operation_classes: class-name parts of modules with children whose output counts
            as one operation of a SNOWS window (see :func:`snows_hf.windows.is_operation`);
            default :data:`OPERATION_CLASSES`, attention modules.
        identity_classes: class-name endings of modules that are the identity in eval and
            never an operation; default :data:`IDENTITY_CLASSES`, stochastic depth.

    Example:
        >>> Adapter("vit", blocks="layers")  # doctest: +NORMALIZE_WHITESPACE
        Adapter(model_type='vit', blocks='layers', target_types=('linear', 'conv1d'), ignore=(), next_call=None,
                operation_classes=('Attention',), identity_classes=('DropPath',))
    """

    model_type: str
    blocks: str
    target_types: tuple[str, ...] = ("linear", "conv1d")
    ignore: tuple[str, ...] = field(default=())
    next_call: NextCall | None = None
    operation_classes: tuple[str, ...] = OPERATION_CLASSES
    identity_classes: tuple[str, ...] = IDENTITY_CLASSES


@dataclass
class BlockList:
    """The blocks of a model, in execution order.

    Attributes:
        path: where they were found (``vit.layers``, ``resnet.encoder.stages.*.layers``).
        modules: the blocks (the model's own list, or one gathering nested lists; never copies).
        names: each block's full module name in the model.
        chain: the family's ``(block, call, hidden) -> call`` of the following block.
        kinds: each block's kind (``config.layer_types``) in a stack that mixes kinds, else ``None``.
        adapter: the family's entry, or ``None`` for a model without one.
    """

    path: str
    modules: nn.ModuleList
    names: list[str]
    chain: NextCall = default_next_call
    kinds: list[str] | None = None
    adapter: Adapter | None = None

    def __post_init__(self) -> None:
        self._positions = {id(block): index for index, block in enumerate(self.modules)}

    def __len__(self) -> int:
        return len(self.modules)

    def next_call(self, block: nn.Module, call: BlockCall, hidden: torch.Tensor) -> BlockCall:
        """The call of the block after ``block`` (one of :attr:`modules`), whose input is
        ``hidden``: the family's :attr:`chain`, with the arguments of the following block's
        own kind where kinds mix (``call`` carries them, see :meth:`first_of_kinds`).

        Example:
            >>> call = blocks.next_call(blocks.modules[0], call, run_block(blocks.modules[0], call))  # doctest: +SKIP
        """
        following = self.chain(block, call, hidden)
        index = self._positions[id(block)]
        if self.kinds and index + 1 < len(self.kinds):
            following = following.as_kind(self.kinds[index], self.kinds[index + 1])
        return following

    def first_of_kinds(self) -> dict[str, nn.Module]:
        """The first block of each kind, in order (empty when all blocks are of one kind):
        the blocks whose call arguments :func:`~snows_hf.pipeline.capture_block_inputs` keeps.

        Example:
            >>> list(find_block_list(gemma3).first_of_kinds())  # doctest: +SKIP
            ['sliding_attention', 'full_attention']
        """
        first: dict[str, nn.Module] = {}
        for kind, block in zip(self.kinds or (), self.modules):
            first.setdefault(kind, block)
        return first


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Add an architecture entry; a second entry for the same ``model_type`` is an error.

    Example:
        >>> register_adapter(Adapter("my-arch", blocks="encoder.layers"))  # doctest: +SKIP
    """
    if adapter.model_type in ADAPTERS:
        raise ValueError(f"an adapter for model_type {adapter.model_type!r} is already registered")
    ADAPTERS[adapter.model_type] = adapter
    return adapter


def weight_layout(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1d"`` or ``"conv2d"`` for prunable modules, else ``None``."""
    for cls, layout in _LAYOUT_BY_TYPE:
        if cls and isinstance(module, cls):
            return layout
    return None


def _resolve(root: nn.Module, path: str) -> list[nn.Module] | None:
    """The blocks under ``path``: children of the container it names (``*`` expands)."""
    containers = [root]
    for part in path.split("."):
        if part == "*":
            containers = [child for c in containers for child in c.children()]
        else:
            containers = [getattr(c, part, None) for c in containers]
            if any(not isinstance(c, nn.Module) for c in containers):
                return None
    if "*" not in path and not isinstance(containers[0], nn.ModuleList):
        return None
    return [block for c in containers for block in c.children()]


def _candidate_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList whose children all share one class, longest first."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1:
                found.append((name, module))
    found.sort(key=lambda item: -len(item[1]))
    return found


def find_block_list(model: nn.Module, block_path: str | None = None) -> BlockList:
    """Locate the blocks of ``model``: explicit path, registered adapter, or fallback.

    ``block_path`` is a dotted name from the model's root (``*`` flattens nested lists).
    Without it, the family's adapter decides; models without one take the longest list
    of identical modules, and an error names the candidates when that is ambiguous.

    Example:
        >>> blocks = find_block_list(vit_model)  # doctest: +SKIP
        >>> blocks.path, len(blocks), blocks.names[0]  # doctest: +SKIP
        ('vit.layers', 12, 'vit.layers.0')
    """
    names = {id(m): n for n, m in model.named_modules()}
    adapter = adapter_for(model)
    if block_path:
        found = _resolve(model, block_path)
        if not found:
            raise SettingError(f"{setting('block_path', block_path)} does not name a non-empty ModuleList in this model",
                               field="block_path")
        return _block_list(model, block_path, found, names, adapter)
    if adapter is not None:
        found = _resolve(model.base_model, adapter.blocks)
        if found:
            prefix = names[id(model.base_model)]
            return _block_list(model, f"{prefix}.{adapter.blocks}" if prefix else adapter.blocks, found, names, adapter)
    candidates = _candidate_lists(model)
    if not candidates:
        raise SettingError(
            f"cannot find the blocks of this {type(model).__name__}: it has no list of identical modules",
            field="block_path", hint=f"pass {setting('block_path')} with the dotted name of its block list",
        )
    if len(candidates) > 1 and len(candidates[0][1]) == len(candidates[1][1]):
        seen = ", ".join(f"{n} ({len(m)})" for n, m in candidates[:5])
        raise SettingError(f"ambiguous block lists in {type(model).__name__}: {seen}", field="block_path",
                           hint=f"pass {setting('block_path')} to choose")
    name, module = candidates[0]
    return _block_list(model, name, list(module), names, adapter)


def _block_list(model: nn.Module, path: str, found: list[nn.Module], names: dict[int, str],
                adapter: Adapter | None) -> BlockList:
    chain = (adapter.next_call if adapter else None) or default_next_call
    kinds = _block_kinds(model, path, len(found))
    return BlockList(path, nn.ModuleList(found), [names[id(b)] for b in found], chain, kinds, adapter)


def _block_kinds(model: nn.Module, path: str, count: int) -> list[str] | None:
    """Each block's kind from the config's own ``layer_types`` field when it mixes kinds
    (ResNet's and RegNet's configs only name the layer types they allow, as a class constant)."""
    config = getattr(model, "config", None)
    own = [c for c in (config, getattr(config, "get_text_config", lambda: None)()) if c is not None]
    layer_types = next((vars(c)["layer_types"] for c in own if "layer_types" in vars(c)), None)
    if not layer_types or len(set(layer_types)) < 2:
        return None
    if len(layer_types) != count:
        raise ValueError(
            f"config.layer_types mixes {', '.join(sorted(set(layer_types)))} over {len(layer_types)} layers, "
            f"but the blocks at {path} are {count}, so their kinds are unknown; point block_path at those layers"
        )
    return list(layer_types)


def adapter_for(model: nn.Module) -> Adapter | None:
    """The registered adapter for ``model.config.model_type``, or ``None``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return ADAPTERS.get(model_type)


def _compile(patterns: list[str] | tuple[str, ...] | None) -> list[re.Pattern]:
    return [re.compile(p) for p in patterns or ()]


def _matches(patterns: list[re.Pattern], names: tuple[str, ...], type_name: str) -> list[re.Pattern]:
    return [p for p in patterns if p.fullmatch(type_name) or any(p.search(n) for n in names)]


def block_targets(
    block: nn.Module,
    model: nn.Module,
    prefix: str = "",
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    saved_names: dict[str, str] | None = None,
) -> list[tuple[str, nn.Module]]:
    """Prunable modules of ``block`` (names relative to it).

    By default the model's adapter decides (its target types, minus its ``ignore``).
    ``targets`` / ``ignore`` are regular expressions searched in each module's full name
    (``prefix`` + relative name) and in its saved-checkpoint spelling (``saved_names``,
    see :func:`~snows_hf.adapters.naming.checkpoint_names`), or matching its class name
    whole (``Linear``, ``Conv1D``, ``Conv2d``). Only Linear, Conv1D and Conv2d modules
    with a weight are ever returned; grouped and depthwise convolutions (``groups > 1``)
    only when ``targets`` names them, since N:M along input channels is meant for dense
    channel mixing (and a depthwise conv has one input channel per group).

    Example:
        >>> [n for n, _ in block_targets(vit.vit.layers[0], vit)]  # doctest: +SKIP
        ['attention.q_proj', 'attention.k_proj', 'attention.v_proj', 'attention.o_proj', 'mlp.fc1', 'mlp.fc2']
        >>> [n for n, _ in block_targets(vit.vit.layers[0], vit, "vit.layers.0", ignore=["query"])]  # doctest: +SKIP
        ['attention.k_proj', 'attention.v_proj', 'attention.o_proj', 'mlp.fc1', 'mlp.fc2']
    """
    adapter = adapter_for(model)
    types = adapter.target_types if adapter else FALLBACK_TARGET_TYPES
    family_ignore = _compile(adapter.ignore if adapter else ())
    wanted, unwanted = _compile(targets), _compile(ignore)
    saved_names = saved_names or {}
    found = []
    for name, module in block.named_modules():
        layout = weight_layout(module)
        if layout is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        full = f"{prefix}.{name}" if prefix else name
        names = (full, saved_names.get(full, full))
        if wanted:
            selected = bool(_matches(wanted, names, type(module).__name__))
        else:
            selected = (layout in types and getattr(module, "groups", 1) == 1
                        and not any(p.search(name) for p in family_ignore))
        if selected and not _matches(unwanted, names, type(module).__name__):
            found.append((name, module))
    return found


def check_patterns(
    blocks: nn.ModuleList, block_names: list[str], patterns: list[str] | None, saved_names: dict[str, str]
) -> list[str]:
    """The ``patterns`` that match no Linear/Conv1D/Conv2d module in ``blocks``.

    Example:
        >>> check_patterns(vit.vit.layers, ["vit.layers.0", "vit.layers.1"], ["q_proj", "nope"], {})  # doctest: +SKIP
        ['nope']
    """
    unmatched = list(_compile(patterns))
    for block, prefix in zip(blocks, block_names):
        for name, module in block.named_modules():
            if unmatched and weight_layout(module) is not None:
                full = f"{prefix}.{name}"
                hits = _matches(unmatched, (full, saved_names.get(full, full)), type(module).__name__)
                unmatched = [p for p in unmatched if p not in hits]
    return [p.pattern for p in unmatched]
