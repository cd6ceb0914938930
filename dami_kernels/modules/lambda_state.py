"""One per-model λ state shared by every interpolating layer.

λ lives in an fp32 device buffer that is updated in place (``copy_``) and only reallocated when a λ
larger than any before is set, so ``torch.compile`` graphs and CUDA graphs that captured its address stay
valid (also across `lambda_scope` restoring a scalar between calls). It is either one scalar
that applies to any batch (set from a Python number or a 0-d tensor) or one value per sequence [B]
(set from a 1-D tensor); a per-sequence λ whose length differs from the batch at forward time is a
ValueError, never a silent broadcast.

When λ is set, its values are checked on the host anyway, so the state also records there whether
every sequence shares one λ (`uniform`, a float or None). Layers use it to pick cheaper paths (one
weight at an endpoint, one blended GEMM in prefill) without any device sync; under torch.compile they
ignore it, so compiled graphs never depend on λ's value.
"""
from __future__ import annotations

from numbers import Real

import torch
from torch import nn


def validate_lambda(lam, allow_extrapolation: bool, name: str = "lam") -> tuple[torch.Tensor, bool]:
    """Check λ and return (fp32 values [n] on the CPU, per_sequence).

    lam: a Python number, a 0-d tensor (scalar: applies to any batch), or a 1-D tensor or list of
    numbers [B] (per sequence). A device tensor is copied to the host once (one sync) for the checks.
    Raises ValueError for other types or shapes, for NaN/inf, and for values outside [0, 1] unless
    allow_extrapolation is set.
    """
    if isinstance(lam, (list, tuple)):
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in lam):
            raise ValueError(f"{name} given as a list must hold numbers only")
        lam = torch.tensor([float(v) for v in lam], dtype=torch.float32)
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise ValueError(f"{name} must be a float or a floating-point tensor, got dtype {lam.dtype}")
        if lam.dim() > 1:
            raise ValueError(f"{name} must be a float or a 1-D tensor [batch], got shape {tuple(lam.shape)}")
        if lam.dim() == 1 and lam.numel() == 0:
            raise ValueError(f"{name} is an empty tensor; give one value per sequence")
        if lam.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (it holds no values)")
        values = lam.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
        per_sequence = lam.dim() == 1
    elif isinstance(lam, Real) and not isinstance(lam, bool):
        values = torch.tensor([float(lam)], dtype=torch.float32)
        per_sequence = False
    else:
        raise ValueError(f"{name} must be a float or a 1-D tensor [batch], got {type(lam).__name__}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be finite, got {_show(values)}")
    if not allow_extrapolation and bool(((values < 0) | (values > 1)).any()):
        raise ValueError(
            f"{name} must lie in [0, 1], got {_show(values)}; values outside need an explicit opt-in "
            "(allow_extrapolation=True when loading or converting the pair)"
        )
    return values, per_sequence


def _show(values: torch.Tensor) -> str:
    v = values.cpu().tolist()
    return f"{v[0]}" if len(v) == 1 else f"{v[:8]}{' ...' if len(v) > 8 else ''}"


class LambdaState(nn.Module):
    """Holds λ for one model: ``lam`` (fp32, [1] for a scalar or [B] per sequence).

    ``lam`` is a view of the front of the non-persistent buffer ``buf``, which only grows: setting a λ
    that fits reuses the same memory (the address compiled graphs and CUDA graphs captured), also
    after a scalar/other batch size was set in between (e.g. by `lambda_scope` restoring). Registered
    once on the root model (so ``.to()`` moves it); layers hold it by plain reference.
    """

    def __init__(self, lam=0.0, *, allow_extrapolation: bool = False, device=None):
        super().__init__()
        self.allow_extrapolation = bool(allow_extrapolation)
        self.per_sequence = False
        self.n = 1
        self.uniform: float | None = None  # the λ every sequence shares, when they share one
        self.register_buffer("buf", torch.zeros(1, dtype=torch.float32, device=device), persistent=False)
        self._views: tuple | None = None  # (buf[:n], buf[:1], buf), eager only
        self.set(lam)

    @property
    def lam(self) -> torch.Tensor:
        """The current λ values [n] (a view of ``buf``)."""
        return self.buf[: self.n]

    def set(self, lam) -> None:
        """Validate and store λ (float, 0-d tensor, or 1-D tensor [B]); in place unless it outgrows the buffer."""
        values, per_sequence = validate_lambda(lam, self.allow_extrapolation)
        n = values.numel()
        if n > self.buf.numel():
            self.buf = torch.zeros(n, dtype=torch.float32, device=self.buf.device)
        self._views = None
        self.buf[:n].copy_(values, non_blocking=True)
        self.n = n
        self.per_sequence = per_sequence
        lo, hi = float(values.min()), float(values.max())
        self.uniform = lo if lo == hi else None

    def get(self):
        """The current λ in the form `set` accepts: a float, or a copy of the per-sequence tensor [B]."""
        if self.per_sequence:
            return self.lam.detach().clone()
        return float(self.buf[0])

    def for_batch(self, batch: int) -> torch.Tensor:
        """λ per sequence [batch] (fp32, on the buffer's device) for an input whose first dim is `batch`."""
        if self.per_sequence:
            self._check_batch(batch)
            return self.lam
        return self.buf[:1].expand(batch)

    def for_layer(self, batch: int) -> tuple[torch.Tensor, float | None]:
        """(λ, uniform) for a layer's input whose first dim is `batch`: λ is [batch] per sequence or
        [1] for every row (fp32 contiguous on the buffer's device); uniform is the shared λ as a float,
        or None when sequences differ or when tracing (torch.compile must not specialize on λ)."""
        if self.per_sequence:
            self._check_batch(batch)
        if torch.compiler.is_compiling():
            return (self.buf[: self.n] if self.per_sequence else self.buf[:1]), None
        views = self._views
        buf = self._buffers["buf"]  # (the dict, not nn.Module.__getattr__: this runs once per layer call)
        if views is None or views[2] is not buf:  # views of the current buffer, made once
            views = self._views = (buf[: self.n], buf[:1], buf)
        return views[0] if self.per_sequence else views[1], self.uniform

    def _check_batch(self, batch: int) -> None:
        if self.n != batch:
            raise ValueError(
                f"λ holds {self.n} values (one per sequence) but the input batch has "
                f"{batch} rows; set one λ per row (for generate with num_beams/num_return_sequences, "
                "expand λ per returned row, e.g. lambda_scope(model, lam, expand=n))"
            )

    def _apply(self, fn, recurse=True):
        # Keep λ in fp32 through model.to(dtype)/half()/bfloat16(): only its device may change.
        out = super()._apply(fn, recurse)
        if self.buf.dtype != torch.float32:
            self.buf = self.buf.float()
        return out

    def extra_repr(self) -> str:
        kind = "per_sequence" if self.per_sequence else "scalar"
        return f"{kind}, n={self.n}, allow_extrapolation={self.allow_extrapolation}"


def lam_view(lam_seq: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape λ per sequence [B] to [B, 1, ..., 1] with `ndim` dims, for broadcasting over [B, ...]."""
    return lam_seq.reshape((lam_seq.shape[0],) + (1,) * (ndim - 1))


def blend(a: torch.Tensor, b: torch.Tensor, lam) -> torch.Tensor:
    """(1-λ)·a + λ·b in fp32, returned in a's dtype; λ broadcasts against a and b."""
    return ((1.0 - lam) * a.float() + lam * b.float()).to(a.dtype)


class LambdaBound:
    """Mixin for layers that read λ from a shared LambdaState held by reference (not a submodule)."""

    def bind_lambda(self, state: LambdaState) -> None:
        if not isinstance(state, LambdaState):
            raise ValueError(f"lam_state must be a LambdaState, got {type(state).__name__}")
        object.__setattr__(self, "lam_state", state)  # plain attribute: not registered as a submodule
