"""Views of weight tensors as ``(rows, inputs)`` matrices, the shape masks work on.

- ``"linear"``: ``nn.Linear`` weights are already ``(out, in)``.
- ``"conv1d"``: GPT-2's ``Conv1D`` stores ``(in, out)``; the view is its transpose.
- ``"conv2d"``: ``(out, in, kh, kw)`` becomes ``(out * kh * kw, in)``, so N:M groups
  run along input channels at each kernel position.
"""

from __future__ import annotations

import torch

LAYOUTS = ("linear", "conv1d", "conv2d")


def to_rows(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """Return the ``(rows, inputs)`` matrix view of ``weight`` (a copy for conv2d).

    Example:
        >>> to_rows(torch.zeros(3, 5), "conv1d").shape
        torch.Size([5, 3])
    """
    if layout == "linear":
        return weight
    if layout == "conv1d":
        return weight.t()
    if layout == "conv2d":
        out, inp, kh, kw = weight.shape
        return weight.permute(0, 2, 3, 1).reshape(out * kh * kw, inp)
    raise ValueError(f"unknown weight layout {layout!r}; expected one of {LAYOUTS}")


def from_rows(rows: torch.Tensor, layout: str, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_rows`: back to the module's own weight ``shape``.

    Example:
        >>> w = torch.randn(4, 2, 3, 3)
        >>> torch.equal(from_rows(to_rows(w, "conv2d"), "conv2d", w.shape), w)
        True
    """
    if layout == "linear":
        return rows.reshape(shape)
    if layout == "conv1d":
        return rows.t().reshape(shape)
    if layout == "conv2d":
        out, inp, kh, kw = shape
        return rows.reshape(out, kh, kw, inp).permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"unknown weight layout {layout!r}; expected one of {LAYOUTS}")
