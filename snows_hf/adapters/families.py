"""Per-family entries. Paths are relative to ``model.base_model`` (transformers 5 names)."""

from .base import Adapter, register_adapter

for _adapter in (
    Adapter("vit", blocks="layers"),
    Adapter("deit", blocks="layers"),
    Adapter("bert", blocks="encoder.layer"),
    Adapter("llama", blocks="layers"),
):
    register_adapter(_adapter)
