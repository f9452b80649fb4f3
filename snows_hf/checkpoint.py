"""Resumable runs: the pruned weights of every finished block, saved as the loop goes.

A :class:`RunCheckpoint` is a folder beside the output holding ``state.json`` (what run
this is, how many blocks are done, their report lines, the allocation, the RNG state)
and one ``block-NNNNN.safetensors`` per finished block with the pruned weights of its
modules. Files are written to a temporary name and renamed, so a run killed at any
moment leaves a consistent checkpoint. Activations are not stored: on resume they are
recomputed by running the calibration inputs through the finished blocks, exactly as the
uninterrupted run propagated them, so the final weights are bit-identical (on a
deterministic device).

Nothing in a checkpoint is trusted on resume: ``blocks_done`` must lie within the model,
every reported layer must have its weights in its block's file, and the per-layer
sparsity is measured again from those weights (the pipeline checks each tensor's name,
shape, dtype and pattern against the model before writing it). A checkpoint that fails
a check raises :class:`CheckpointError`: it cannot be continued, only deleted.

A checkpoint belongs to its output: the run holds that output
(:func:`snows_hf.output_claim.claim_output`) for as long as it writes either, so one live run
at a time uses it.

Example:
    >>> ckpt = RunCheckpoint("out/.my-model-pruned.checkpoint")  # doctest: +SKIP
    >>> snows_hf.prune_(model, config, calibration, checkpoint=ckpt)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import torch

from .fields import SettingError, setting

if TYPE_CHECKING:  # for annotations only
    from .config import PruneConfig

STATE = "state.json"
FORMAT = 1
# settings that move tensors around without changing the result
_PLACEMENT_FIELDS = ("device", "offload_activations", "offload_dir", "max_memory", "diagnostics")


def run_fingerprint(model: torch.nn.Module, config: PruneConfig, batches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What must match for a checkpoint to continue this run: the settings that change
    results, the model (config, parameter names/shapes, a strided sample of every weight)
    and the calibration tensors (hashed whole).

    Example:
        >>> sorted(run_fingerprint(model, config, batches))  # doctest: +SKIP
        ['calibration', 'config', 'model']
    """
    settings = {k: v for k, v in config.to_dict().items() if k not in _PLACEMENT_FIELDS}
    weights = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        if flat.device.type == "meta":  # offloaded: its shape and dtype still say which model it is
            weights.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
            continue
        sample = flat[:: max(1, flat.numel() // 64)].to("cpu", torch.float64)
        weights.update(f"{name}{tuple(param.shape)}{param.dtype}".encode() + sample.numpy().tobytes())
    data = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            value = batch[key]
            if isinstance(value, torch.Tensor):
                data.update(key.encode() + value.detach().to("cpu").contiguous().numpy().tobytes())
    model_config = getattr(model, "config", None)
    arch = model_config.to_json_string(use_diff=False) if hasattr(model_config, "to_json_string") else type(model).__name__
    from .adapters import find_block_list

    return {
        "config": settings,
        "model": {"class": type(model).__name__, "config_sha256": hashlib.sha256(arch.encode()).hexdigest()[:16],
                  "weights_sha256": weights.hexdigest()[:16],
                  "blocks": len(find_block_list(model, getattr(config, "block_path", None)))},
        "calibration": data.hexdigest()[:16],
    }


def _differences(saved: Any, now: Any, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now)):
            out += _differences(saved.get(key), now.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if saved == now else [f"{where} ({saved!r} then, {now!r} now)"]


class CheckpointError(ValueError):
    """A checkpoint that is damaged or does not fit the model: resuming cannot use it.

    Example:
        >>> raise CheckpointError("block 3 of the checkpoint has no weight h.3.fc.weight")  # doctest: +SKIP
    """


class RunCheckpoint:
    """Per-block progress of one pruning run, kept in ``folder``.

    ``resume=False`` refuses to start over an existing checkpoint (nothing is lost by
    accident); ``resume=True`` continues it, after checking it belongs to this run.
    """

    def __init__(self, folder: str | os.PathLike, resume: bool = False) -> None:
        self.folder, self.resume = Path(folder), resume
        self.state: dict[str, Any] | None = None

    @property
    def exists(self) -> bool:
        return (self.folder / STATE).is_file()

    def start(self, fingerprint: dict[str, Any]) -> int:
        """Check the checkpoint against this run; the number of blocks already done.

        The state's layer reports get their sparsity and shape measured again from the
        saved weights."""
        if not self.exists:
            self.state = {"format": FORMAT, "fingerprint": fingerprint, "blocks_done": 0, "layers": [],
                          "patterns": None, "rng": None}
            return 0
        self.check_resumable()
        try:
            state = json.loads((self.folder / STATE).read_text())
        except (OSError, ValueError) as err:
            raise self._unusable(f"its {STATE} is unreadable ({err})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise self._unusable(f"it has format {state.get('format') if isinstance(state, dict) else None}, this is {FORMAT}")
        differ = _differences(state.get("fingerprint"), fingerprint)
        if differ:
            raise ValueError(
                f"the checkpoint in {str(self.folder)!r} is from a different run: {'; '.join(differ[:4])}"
                + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
                + "; rerun with the same settings, or delete it to start over"
            )
        done, blocks = state.get("blocks_done"), fingerprint["model"]["blocks"]
        if type(done) is not int or not 0 <= done <= blocks:
            raise self._unusable(f"it counts {done!r} blocks done, and the model has {blocks}")
        self._check_layers(state, done)
        self.state = state
        return done

    def _unusable(self, reason: str) -> CheckpointError:
        return CheckpointError(f"the checkpoint in {str(self.folder)!r} cannot be resumed: {reason}; "
                               "delete that folder to start over")

    def _check_layers(self, state: dict[str, Any], done: int) -> None:
        """Every reported layer is in a finished block and has its weights in that block's
        file; its sparsity and shape are measured from them (the report says what is written)."""
        from .report import LayerReport

        layers, patterns = state.get("layers"), state.get("patterns")
        if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
            raise self._unusable("its layer reports are not a list of objects")
        if patterns is not None and not (isinstance(patterns, dict) and all(
                type(f) in (int, float) and 0 <= f < 1 for f in patterns.values())):
            raise self._unusable("its per-layer sparsities are not fractions in [0, 1)")
        by_block: dict[int, list[dict[str, Any]]] = {}
        for layer in layers:
            try:
                LayerReport(**layer)
            except TypeError as err:
                raise self._unusable(f"a layer report is malformed ({err})") from None
            if type(layer["block"]) is not int or not 0 <= layer["block"] < done:
                raise self._unusable(f"layer {layer['name']!r} is reported in block {layer['block']!r}, "
                                     f"not one of the {done} done")
            by_block.setdefault(layer["block"], []).append(layer)
        for index, reported in sorted(by_block.items()):
            with self._block_file(index) as tensors:
                for layer in reported:
                    key = f"{layer['name']}.weight"
                    if key not in tensors.keys():
                        raise self._unusable(f"block {index} has no weight {key}")
                    weight = tensors.get_tensor(key)
                    layer["sparsity"], layer["shape"] = float((weight == 0).float().mean()), list(weight.shape)

    @contextlib.contextmanager
    def _block_file(self, index: int) -> Iterator[Any]:
        from safetensors import SafetensorError, safe_open

        path = self.folder / f"block-{index:05d}.safetensors"
        try:
            with safe_open(str(path), "pt") as tensors:
                yield tensors
        except (OSError, SafetensorError) as err:
            raise self._unusable(f"{path.name} is unreadable ({' '.join(str(err).split())})") from None

    def check_resumable(self) -> None:
        """Refuse to start a run over an existing checkpoint unless resuming (nothing is lost)."""
        if self.exists and not self.resume:
            raise SettingError(
                f"an unfinished run left a checkpoint in {str(self.folder)!r}", field="resume",
                hint=f"pass {setting('resume', True)} to continue it (or delete that folder to start over)",
            )

    def block_weights(self, index: int) -> dict[str, torch.Tensor]:
        """The pruned weights of finished block ``index`` (full module names)."""
        with self._block_file(index) as tensors:
            return {key: tensors.get_tensor(key) for key in tensors.keys()}

    def save_block(self, index: int, weights: dict[str, torch.Tensor], layers: list[dict], patterns: Any) -> None:
        """Record block ``index`` as done: its weights first, then the state that points at them."""
        from safetensors.torch import save_file

        assert self.state is not None, "start() first"
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"block-{index:05d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp))
        os.replace(tmp, path)
        self.state.update(blocks_done=index + 1, layers=layers, patterns=patterns,
                          rng=torch.get_rng_state().tolist())
        tmp = self.folder / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.folder / STATE)

    def restore_rng(self) -> None:
        if self.state and self.state.get("rng") is not None:
            try:
                torch.set_rng_state(torch.tensor(self.state["rng"], dtype=torch.uint8))
            except (TypeError, ValueError, RuntimeError, OverflowError) as err:
                raise self._unusable(f"its random-generator state is malformed ({' '.join(str(err).split())})") from None

    def remove(self) -> None:
        """The run is complete: the checkpoint goes."""
        shutil.rmtree(self.folder, ignore_errors=True)
