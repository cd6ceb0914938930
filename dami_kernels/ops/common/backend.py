"""Backend choice for the fused ops: explicit and visible, never a silent fallback on CUDA.

Backends: "triton" (CUDA tensors, or CPU tensors with TRITON_INTERPRET=1) and "torch" (the reference).
The default comes from the DAMI_BACKEND environment variable ("auto" when unset). "auto" picks triton
for CUDA tensors and for CPU tensors when TRITON_INTERPRET=1, and torch for CPU tensors otherwise. On
CUDA, "auto" without an importable triton is an error that says to pass backend="torch".
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


_TRITON_IMPORTS: bool | None = None


def triton_available() -> bool:
    """True when the triton package imports (it is optional: without it the torch path runs).
    The answer is kept in a module global (not an lru_cache, which torch.compile warns about)."""
    global _TRITON_IMPORTS
    if _TRITON_IMPORTS is None:
        try:
            import triton  # noqa: F401

            _TRITON_IMPORTS = True
        except ImportError:
            _TRITON_IMPORTS = False
    return _TRITON_IMPORTS


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_backend() -> str:
    name = os.environ.get("DAMI_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"DAMI_BACKEND={name!r} is not one of {BACKENDS}")
    return name


_RESOLVED: dict[tuple, str] = {}


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Return "triton" or "torch" for tensors on `device`; raises ValueError when impossible.

    Answers are cached per (backend, device type, DAMI_BACKEND, TRITON_INTERPRET): layers call this on
    every forward, and the environment is still read each time, so changing it takes effect."""
    env = os.environ
    key = (backend, device.type, env.get("DAMI_BACKEND"), env.get("TRITON_INTERPRET"))
    found = _RESOLVED.get(key)
    if found is None:
        found = _RESOLVED[key] = _resolve(backend, device)
    return found


def _resolve(backend: str | None, device: torch.device) -> str:
    name = default_backend() if backend is None else backend
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not one of {BACKENDS}")
    if name == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    if name == "auto":
        if on_cuda:
            if not triton_available():
                raise ValueError(
                    "backend='auto' on CUDA needs triton, which is not installed; install it or "
                    "pass backend='torch' (or DAMI_BACKEND=torch) to use the unfused reference"
                )
            return "triton"
        return "triton" if (interpreting() and triton_available()) else "torch"
    # explicit "triton"
    if not triton_available():
        raise ValueError("backend='triton' needs the triton package, which is not installed")
    if not on_cuda and not interpreting():
        raise ValueError(f"backend='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 (set before import)")
    return "triton"
