"""Device selection: the one place that names accelerator back ends."""

from __future__ import annotations

import torch

from .fields import SettingError, setting


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
            raise SettingError(f"device {spec!r} is not available on this machine", field="device",
                               hint=f"use {setting('device', 'cpu')} or auto")
        if device.index is not None and hasattr(backend, "device_count") and device.index >= backend.device_count():
            raise ValueError(f"device {spec!r} does not exist: this machine has {backend.device_count()}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU), so wall times are real.

    Example:
        >>> synchronize(torch.device("cpu"))
    """
    if device.type == "cpu":
        return
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        accelerator.synchronize(device)
    elif hasattr(getattr(torch, device.type, None), "synchronize"):
        getattr(torch, device.type).synchronize(device)


SPARSE_TENSOR_CORES = (8, 0)  #: the first compute capability with 2:4 sparse tensor cores (Ampere)


def semi_structured_support(device: torch.device) -> str | None:
    """Why 2:4 sparse kernels cannot run on ``device``, or ``None`` when they can.

    PyTorch's semi-structured sparse tensors run on NVIDIA GPUs of compute capability
    8.0 or newer (A100, A10, L4, RTX 30xx, H100, H200, ...).

    Example:
        >>> semi_structured_support(torch.device("cpu"))
        'on cpu: 2:4 sparse kernels run on NVIDIA GPUs of compute capability 8.0 or newer'
    """
    needs = "2:4 sparse kernels run on NVIDIA GPUs of compute capability {}.{} or newer".format(*SPARSE_TENSOR_CORES)
    if device.type == "meta":
        return "weights offloaded (on the meta device): only weights that live on the GPU can be converted"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"on {device.type}: {needs}"
    capability = torch.cuda.get_device_capability(device)
    if capability < SPARSE_TENSOR_CORES:
        name = torch.cuda.get_device_name(device)
        return f"on {name} (compute capability {capability[0]}.{capability[1]}): {needs}"
    return None


def semi_structured_backends() -> list[str]:
    """PyTorch's 2:4 kernel back ends this torch build runs, the preferred one first.

    cuSPARSELt (when the build ships it) is the default of
    ``torch.sparse.to_sparse_semi_structured``; CUTLASS comes with every CUDA build. A
    CPU-only build has none.

    Example:
        >>> set(semi_structured_backends()) <= {"cusparselt", "cutlass"}
        True
    """
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return (["cusparselt"] if cusparselt is not None and cusparselt.is_available() else []) + \
        (["cutlass"] if torch.version.cuda else [])


def device_label(device: torch.device) -> str:
    """A short human name for ``device``: the GPU's model name where there is one.

    Example:
        >>> device_label(torch.device("cpu"))
        'cpu'
    """
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return str(device)


def embedding_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s input embeddings (or first parameter): ``meta`` when
    accelerate keeps them offloaded.

    Example:
        >>> embedding_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    try:  # vision models (ResNet, ...) have no input embeddings and may raise for asking
        return next(model.get_input_embeddings().parameters()).device
    except (AttributeError, StopIteration, NotImplementedError):
        return next(model.parameters()).device


def model_input_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s inputs go: the device of its input embeddings (or first parameter)
    or, for a model placed by accelerate whose weights there wait offloaded on the meta
    device, the execution device of its hooks (which bring each weight along).

    Example:
        >>> model_input_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    found = embedding_device(model)
    if found.type != "meta":
        return found
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for single in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            execution = getattr(single, "execution_device", None)
            if execution is not None:
                return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    return torch.device("cpu")
