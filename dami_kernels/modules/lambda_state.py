"""One per-model λ state shared by every interpolating layer.

λ lives in an fp32 device buffer that is updated in place (``copy_``) and only reallocated when a λ
larger than any before is set, so ``torch.compile`` graphs and CUDA graphs that captured its address stay
valid (also across `lambda_scope` restoring a scalar between calls). It is either one scalar
that applies to any batch (set from a Python number or a 0-d tensor) or one value per sequence [B]
(set from a 1-D tensor); a per-sequence λ whose length differs from the batch at forward time is a
ValueError, never a silent broadcast.

A third form, per row (`set_rows`), serves continuous batching: the engine packs the tokens of many
requests into one [1, T] batch, and λ is given for every token row of the packed [B, T] grid (row-major),
plus optionally for the rows that the output layer sees when the engine keeps only the logits rows
(``logits_to_keep``). Layers ask `for_rows(rows)`; rows past the ones set are the engine's padding
(CUDA graphs pad the packed batch) and read λ = 0.

When λ is set, its values are checked on the host anyway, so the state also records there whether
every sequence shares one λ (`uniform`, a float or None). Layers use it to pick cheaper paths (one
weight at an endpoint, one blended GEMM in prefill) without any device sync; under torch.compile and
CUDA-graph capture they ignore it, so compiled graphs never depend on λ's value.
"""
from __future__ import annotations

from numbers import Real
from typing import NamedTuple

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
        lam = lambda_list(lam, name)
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
        values = torch.tensor([_as_float(lam, name)], dtype=torch.float32)
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


def _as_float(value, name: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{name} must be finite, got an integer of {len(str(value))} digits") from None


def lambda_list(values, name: str = "lam") -> torch.Tensor:
    """A list or tuple of λ numbers -> fp32 tensor [n]; ValueError for anything but real numbers (booleans,
    strings, bytes, nested lists) and for an empty list. The one place a list of λ values is read."""
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, Real)][:1]
    if bad:
        bad = bad[0]
        raise ValueError(f"{name} given as a list must hold numbers only, got {type(bad).__name__} {bad!r:.40}")
    if len(values) == 0:
        raise ValueError(f"{name} is an empty list; give one value per sequence")
    return torch.tensor([_as_float(v, name) for v in values], dtype=torch.float32)


def _show(values: torch.Tensor) -> str:
    v = values.cpu().tolist()
    return f"{v[0]}" if len(v) == 1 else f"{v[:8]}{' ...' if len(v) > 8 else ''}"


class RowLambda(NamedTuple):
    """λ per packed token row [T] and, when the output layer sees fewer rows, per output row [L] (or None).
    What `LambdaState.get` returns in per-row mode; `LambdaState.set` takes it back."""

    rows: torch.Tensor
    out: torch.Tensor | None = None


def token_rows(shape: torch.Size, ids: bool = False) -> int:
    """Token rows of a layer input: B·T of features [B, T, ...] (≥ 3 dims) or M of flat rows [M, K];
    ids: every dim of the token ids counts ([B, T] -> B·T)."""
    if ids:
        return shape.numel()
    return shape[0] * shape[1] if len(shape) >= 3 else shape[0]


class LambdaState(nn.Module):
    """Holds λ for one model: ``lam`` (fp32, [1] for a scalar, [B] per sequence or [T] per token row).

    ``lam`` is a view of the front of the non-persistent buffer ``buf``, which only grows: setting a λ
    that fits reuses the same memory (the address compiled graphs and CUDA graphs captured), also
    after a scalar/other batch size was set in between (e.g. by `lambda_scope` restoring). In per-row
    mode the output rows live in a second buffer ``out_buf`` (a fixed address too). Registered once on
    the root model (so ``.to()`` moves it); layers hold it by plain reference.
    """

    def __init__(self, lam=0.0, *, allow_extrapolation: bool = False, device=None):
        super().__init__()
        self.allow_extrapolation = bool(allow_extrapolation)
        self.per_sequence = False
        self.per_row = False  # λ per packed token row (`set_rows`)
        self.n = 1
        self.n_out: int | None = None  # per-row mode: output rows set (None: the output layer reads the rows)
        self.uniform: float | None = None  # the λ every sequence shares, when they share one
        self.register_buffer("buf", torch.zeros(1, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("out_buf", torch.zeros(1, dtype=torch.float32, device=device), persistent=False)
        self._views: tuple | None = None  # (buf[:n], buf[:1], buf), eager only
        self._row_cache: dict = {}  # per-row mode: (rows, output) -> (view, exact), eager only
        self.set(lam)

    @property
    def lam(self) -> torch.Tensor:
        """The current λ values [n] (a view of ``buf``)."""
        return self.buf[: self.n]

    def set(self, lam) -> None:
        """Validate and store λ (float, 0-d tensor, 1-D tensor [B], or a `RowLambda` from `get`); in place
        unless it outgrows the buffer."""
        if isinstance(lam, RowLambda):
            self.set_rows(lam.rows, lam.out)
            return
        values, per_sequence = validate_lambda(lam, self.allow_extrapolation)
        n = self._store("buf", values)
        self.n = n
        self.per_sequence = per_sequence
        self.per_row = False
        self.n_out = None
        lo, hi = float(values.min()), float(values.max())
        self.uniform = lo if lo == hi else None

    def set_rows(self, rows, out=None) -> None:
        """Per-row mode (continuous batching): λ for every token row of the packed batch, rows [T] (a 1-D
        tensor or list), and out [L] for the rows the output layer sees when the engine keeps only the
        logits rows (None: the output layer reads `rows`). Rows past T (and past L) read λ = 0: they are
        the engine's padding. Validated as `set` validates λ."""
        values, _ = validate_lambda(_as_vector(rows, "rows"), self.allow_extrapolation, "rows")
        out_values = None
        if out is not None:
            out_values, _ = validate_lambda(_as_vector(out, "out"), self.allow_extrapolation, "out")
        self.n = self._store("buf", values, pad=True)
        self.n_out = None if out_values is None else self._store("out_buf", out_values, pad=True)
        self.per_sequence = False
        self.per_row = True
        both = values if out_values is None else torch.cat([values, out_values])
        lo, hi = float(both.min()), float(both.max())
        self.uniform = lo if lo == hi else None

    def reserve_rows(self, rows: int) -> None:
        """Grow both buffers to hold `rows` λ values now, so that later `set_rows` calls never reallocate
        (a CUDA graph captured on the buffers stays valid)."""
        for name in ("buf", "out_buf"):
            old = self._buffers[name]
            if rows > old.numel():
                new = torch.zeros(rows, dtype=torch.float32, device=old.device)
                new[: old.numel()].copy_(old)
                setattr(self, name, new)
        self._views = None
        self._row_cache = {}

    def _store(self, name: str, values: torch.Tensor, pad: bool = False) -> int:
        """Copy values to the front of buffer `name` (grown if needed); pad: zero the rest."""
        n = values.numel()
        buf = self._buffers[name]
        if n > buf.numel():
            buf = torch.zeros(n, dtype=torch.float32, device=buf.device)
            setattr(self, name, buf)
        if name != "buf" or n != self.n:  # same buffer and length: the views (and layers' launch memos
            self._views = None           # holding them) stay valid, as λ changes in place
        self._row_cache = {}
        buf[:n].copy_(values, non_blocking=True)
        if pad and n < buf.numel():
            buf[n:].zero_()
        return n

    def get(self):
        """The current λ in the form `set` accepts: a float, a copy of the per-sequence tensor [B], or in
        per-row mode a `RowLambda` of copies."""
        if self.per_row:
            out = None if self.n_out is None else self.out_buf[: self.n_out].detach().clone()
            return RowLambda(self.lam.detach().clone(), out)
        if self.per_sequence:
            return self.lam.detach().clone()
        return float(self.buf[0])

    def for_batch(self, batch: int) -> torch.Tensor:
        """λ per sequence [batch] (fp32, on the buffer's device) for an input whose first dim is `batch`."""
        if self.per_sequence:
            self._check_batch(batch)
            return self.lam
        return self.buf[:1].expand(batch)

    def for_rows(self, rows: int, output: bool = False) -> tuple[torch.Tensor, int, float | None]:
        """(λ, rows_per_lam, uniform) for a layer input of `rows` token rows (B·T of a [B, T] batch,
        sequence after sequence): row r reads λ[r // rows_per_lam]; λ is [rows] per row, [B] per sequence
        or [1]. output: the layer sees the output rows (the model's output layer, when the engine keeps
        only the logits rows). uniform as in `for_layer`. This is the form `interp_linear_layer` takes
        (as `lam` with `rows_per_lam`)."""
        if self.per_row:
            if torch.compiler.is_compiling():
                return self._row_view(rows, output)[0], 1, None
            hit = self._row_cache.get((rows, output))  # every layer of a step asks the same two keys
            if hit is None:
                hit = self._row_cache[(rows, output)] = self._row_view(rows, output)
            view, exact = hit
            return view, 1, (self._uniform_now() if exact and self.uniform is not None else None)
        if self.per_sequence:
            if rows % self.n:
                raise ValueError(f"λ holds {self.n} values (one per sequence) but the layer got {rows} "
                                 f"rows, not a multiple of {self.n}; set one λ per sequence")
            lam, uniform = self.for_layer(self.n)
            return lam, rows // self.n, uniform
        lam, uniform = self.for_layer(rows)
        return lam, max(rows, 1), uniform

    def _row_view(self, rows: int, output: bool) -> tuple[torch.Tensor, bool]:
        """(λ for `rows` packed rows, whether rows is exactly the number set) in per-row mode."""
        n, buf = (self.n_out, self._buffers["out_buf"]) if output and self.n_out is not None \
            else (self.n, self._buffers["buf"])
        if rows < n or rows > buf.numel():
            raise ValueError(f"λ is set for {n} packed token rows (buffer of {buf.numel()}) but the layer "
                             f"got {rows} rows; set λ for every row of the packed batch (set_rows)")
        return buf[:rows], rows == n

    def _uniform_now(self) -> float | None:
        """`uniform`, or None while tracing or capturing a CUDA graph (graphs must not bake in λ)."""
        if torch.compiler.is_compiling():
            return None
        if self._buffers["buf"].is_cuda and torch.cuda.is_current_stream_capturing():
            return None
        return self.uniform

    def for_layer(self, batch: int) -> tuple[torch.Tensor, float | None]:
        """(λ, uniform) for a layer's input whose first dim is `batch`: λ is [batch] per sequence or
        [1] for every row (fp32 contiguous on the buffer's device); uniform is the shared λ as a float,
        or None when sequences differ or when tracing (torch.compile must not specialize on λ)."""
        if self.per_sequence:
            self._check_batch(batch)
        elif self.per_row:
            raise ValueError("λ is set per packed token row (set_rows); this layer must read it with for_rows")
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
        for name in ("buf", "out_buf"):
            if self._buffers[name].dtype != torch.float32:
                setattr(self, name, self._buffers[name].float())
        self._views = None
        self._row_cache = {}
        return out

    def extra_repr(self) -> str:
        kind = "per_row" if self.per_row else "per_sequence" if self.per_sequence else "scalar"
        return f"{kind}, n={self.n}, allow_extrapolation={self.allow_extrapolation}"


def _as_vector(values, name: str):
    """A list or 1-D tensor of λ values (per-row mode takes no scalar)."""
    if isinstance(values, torch.Tensor) and values.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor or a list of λ values, got shape {tuple(values.shape)}")
    if not isinstance(values, (torch.Tensor, list, tuple)):
        raise ValueError(f"{name} must be a 1-D tensor or a list of λ values, got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} is empty; give one λ per packed token row")
    return values


def lam_rows_view(lam: torch.Tensor, shape: torch.Size, ndim: int) -> torch.Tensor:
    """λ per token row (`for_rows(token_rows(shape))`) as [B, T, 1, ..., 1] for an input [B, T, ...] (or
    [M, 1] for flat rows [M, D]), with `ndim` dims, for broadcasting."""
    lead = tuple(shape[:2]) if len(shape) >= 3 else tuple(shape[:1])
    return lam.reshape(lead + (1,) * (ndim - len(lead)))


def lam_view(lam_seq: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape λ per sequence [B] to [B, 1, ..., 1] with `ndim` dims, for broadcasting over [B, ...]."""
    return lam_seq.reshape((lam_seq.shape[0],) + (1,) * (ndim - 1))


def blend(a: torch.Tensor, b: torch.Tensor, lam) -> torch.Tensor:
    """(1-λ)·a + λ·b in fp32, returned in a's dtype; λ broadcasts against a and b.

    Under tensor parallelism a and b may be DTensors (e.g. a vocab-sharded embedding lookup); a plain λ
    tensor is then wrapped as a replicated DTensor on their mesh, as distributed ops require."""
    if isinstance(lam, torch.Tensor) and _is_dtensor(a) and not _is_dtensor(lam):
        from torch.distributed.tensor import DTensor, Replicate

        lam = DTensor.from_local(lam, a.device_mesh, [Replicate()] * a.device_mesh.ndim, run_check=False)
    return ((1.0 - lam) * a.float() + lam * b.float()).to(a.dtype)


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor"  # no torch.distributed import on the common path


class LambdaBound:
    """Mixin for layers that read λ from a shared LambdaState held by reference (not a submodule)."""

    def bind_lambda(self, state: LambdaState) -> None:
        if not isinstance(state, LambdaState):
            raise ValueError(f"lam_state must be a LambdaState, got {type(state).__name__}")
        object.__setattr__(self, "lam_state", state)  # plain attribute: not registered as a submodule
