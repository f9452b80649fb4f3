"""Device selection: the one place that names accelerator back ends."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda:1"``, ``"mps"``, ... into a usable ``torch.device``.

    ``auto`` picks the first accelerator torch reports, else the CPU. Asking for a device
    this machine lacks is a ``ValueError`` rather than a failure deep inside the run.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None and accelerator.is_available():
            return torch.device(accelerator.current_accelerator())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"invalid device {spec!r}; use auto, cpu, cuda, cuda:N, mps, xpu, ...") from None
    if device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
        if not available:
            raise ValueError(f"device {spec!r} is not available on this machine; use --device cpu or auto")
        if device.index is not None and hasattr(backend, "device_count") and device.index >= backend.device_count():
            raise ValueError(f"device {spec!r} does not exist: this machine has {backend.device_count()}")
    return device
