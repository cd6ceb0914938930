"""Resolve a user's device argument to a torch.device, with one-line errors instead of torch's tracebacks."""

from __future__ import annotations

import torch

# Device types torch can place a model on, and how to ask whether this machine has one.
_BACKENDS = {
    "cuda": lambda: torch.cuda.is_available(),
    "mps": lambda: torch.backends.mps.is_available(),
    "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
}
_COUNTS = {
    "cuda": lambda: torch.cuda.device_count(),
    "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") else 0,
}


def resolve_device(device, *, flag: str = "device") -> torch.device:
    """None -> cpu; a str, int (CUDA index) or torch.device -> a usable torch.device.

    Raises ValueError naming `flag` (the argument, or the CLI option such as "--device") for an unknown
    device string, a device type this torch build or machine does not have (e.g. "cuda" with a CPU-only
    torch, "tpu"), an index beyond the available devices, or the meta device (it holds no weights).
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"{flag} must be a device string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {device!r} is not a device torch knows (use e.g. cpu, cuda or cuda:1)") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise ValueError(f"{flag} {device!r}: the meta device holds no weights; use cpu or cuda")
    available = _BACKENDS.get(dev.type)
    if available is None:
        raise ValueError(f"{flag} {device!r}: device type {dev.type!r} is not supported (use cpu, cuda, mps or xpu)")
    if not available():
        extra = " (this torch was built without CUDA)" if dev.type == "cuda" and torch.version.cuda is None else ""
        raise ValueError(f"{flag} {device!r}: no {dev.type} device is available on this machine{extra}")
    count = _COUNTS.get(dev.type)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ValueError(f"{flag} {device!r}: only {count()} {dev.type} device(s) are visible")
    return dev
