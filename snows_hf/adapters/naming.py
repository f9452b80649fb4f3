"""Module names as ``save_pretrained`` writes them.

transformers 5 renames some modules in memory (ViT: ``vit.layers.0.attention.q_proj``)
and writes the checkpoint under the old keys (``vit.encoder.layer.0.attention.attention.
query``). Users copy names from either place, so target patterns match both.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


def checkpoint_names(model: nn.Module) -> dict[str, str]:
    """Map in-memory module names to their saved-checkpoint spelling, where they differ.

    Uses the model's own weight-conversion table (the one ``save_pretrained`` reverses);
    models without one, or a transformers without the table, map to nothing.

    Example:
        >>> checkpoint_names(vit)["vit.layers.0.attention.q_proj"]  # doctest: +SKIP
        'vit.encoder.layer.0.attention.attention.query'
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange, WeightConverter, WeightRenaming

        conversions = getattr(model, "_weight_conversions", None)
        if conversions is None:
            conversions = get_model_conversion_mapping(model, add_legacy=False)
        reverse = [c.reverse_transform() for c in conversions[::-1] if not isinstance(c, PrefixChange)]
    except Exception as err:  # an internal table: a transformers without it means no renames
        logger.debug("no checkpoint renaming table (%s)", err)
        return {}
    converters = [c for c in reverse if isinstance(c, WeightConverter)]
    renamings = [c for c in reverse if isinstance(c, WeightRenaming)]
    names = {}
    for name, module in model.named_modules():
        if not name or getattr(module, "weight", None) is None:
            continue
        key = f"{name}.weight"
        for converter in converters:
            key, matched = converter.rename_source_key(key)
            if matched is not None:
                break
        for renaming in renamings:
            key, _ = renaming.rename_source_key(key)
        saved = key.removesuffix(".weight")
        if saved != name:
            names[name] = saved
    return names
