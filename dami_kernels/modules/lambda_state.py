"""One per-model λ state shared by every interpolating layer.

λ lives in an fp32 device buffer that is updated in place (``copy_``) and only reallocated when a λ
larger than any before is set, so ``torch.compile`` graphs and CUDA graphs that captured its address stay
valid (also across `lambda_scope` restoring a scalar between calls). The state is in one of three modes
(`LambdaMode`):

- SCALAR: one λ for any batch (set from a Python number or a 0-d tensor), ``buf[:1]``;
- PER_SEQUENCE: one λ per sequence [B] (set from a 1-D tensor or a list), ``buf[:B]``; a length that differs
  from the batch at forward time is a ValueError, never a silent broadcast;
- PER_ROW (`set_rows`, continuous batching): the engine packs the tokens of many requests into one [1, T]
  batch and gives λ for every token row of the packed [B, T] grid (row-major) in ``buf[:T]``, plus
  optionally for the rows that the output layer sees when the engine keeps only the logits rows
  (``logits_to_keep``) in ``out_buf[:L]``. Layers ask `for_rows(rows)`; rows past the ones set are the
  engine's padding (CUDA graphs pad the packed batch) and read λ = 0.

When λ is set, its values are checked on the host anyway, so the state also records there whether
every sequence shares one λ (`uniform`, a float or None). Layers use it to pick cheaper paths (one
weight at an endpoint, one blended GEMM in prefill) without any device sync; under torch.compile and
CUDA-graph capture they ignore it, so compiled graphs never depend on λ's value.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import torch
from torch import nn

from dami_kernels.validation import validate_lambda


class LambdaMode(Enum):
    """How `LambdaState` holds λ: the form it was last set in."""

    SCALAR = "scalar"  # one λ for any batch: buf[:1]
    PER_SEQUENCE = "per_sequence"  # λ [B], one per sequence: buf[:B]
    PER_ROW = "per_row"  # λ [T] per packed token row: buf[:T], and [L] per output row: out_buf[:L] (or none)


SCALAR, PER_SEQUENCE, PER_ROW = LambdaMode.SCALAR, LambdaMode.PER_SEQUENCE, LambdaMode.PER_ROW


class RowLambda(NamedTuple):
    """λ per packed token row [T] and, when the output layer sees fewer rows, per output row [L] (or None).
    What `LambdaState.get` returns in per-row mode; `LambdaState.set` takes it back."""

    rows: torch.Tensor
    out: torch.Tensor | None = None


class LambdaState(nn.Module):
    """Holds λ for one model: ``lam`` (fp32, [1] for a scalar, [B] per sequence or [T] per token row).

    ``lam`` is a view of the front of the non-persistent buffer ``buf``, which only grows: setting a λ
    that fits reuses the same memory (the address compiled graphs and CUDA graphs captured), also
    after a scalar/other batch size was set in between (e.g. by `lambda_scope` restoring). In per-row
    mode the output rows live in a second buffer ``out_buf`` (a fixed address too). Registered once on
    the root model (so ``.to()`` moves it); layers hold it by plain reference.

    Fields: ``mode`` (`LambdaMode`); ``n``, the λ values set (1, B or T); ``n_out``, the output rows set in
    per-row mode (None: the output layer reads the rows); ``uniform``, the λ every row shares, when they
    share one.
    """

    buf: torch.Tensor
    out_buf: torch.Tensor
    # Only the two buffers above, registered in __init__ and only ever replaced by tensors, never None:
    # typed as such so that the hot paths can read the dict (no nn.Module.__getattr__) without a check.
    _buffers: dict[str, torch.Tensor]  # type: ignore[assignment]  # torch types it dict[str, Tensor | None]

    def __init__(self, lam=0.0, *, allow_extrapolation: bool = False, device=None):
        super().__init__()
        self.allow_extrapolation = bool(allow_extrapolation)
        self.mode = SCALAR
        self.n = 1
        self.n_out: int | None = None
        self.uniform: float | None = None
        self.register_buffer("buf", torch.zeros(1, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("out_buf", torch.zeros(1, dtype=torch.float32, device=device), persistent=False)
        # (buf[:n], buf[:1], buf), eager only
        self._views: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # per-row mode: (rows, output) -> (view, exact), eager only
        self._row_cache: dict[tuple[int, bool], tuple[torch.Tensor, bool]] = {}
        self.set(lam)

    @property
    def per_sequence(self) -> bool:
        return self.mode is PER_SEQUENCE

    @property
    def per_row(self) -> bool:
        return self.mode is PER_ROW

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
        self.n = self._store("buf", values)
        self.mode = PER_SEQUENCE if per_sequence else SCALAR
        self.n_out = None
        self.uniform = _shared(values)

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
        self.mode = PER_ROW
        self.uniform = _shared(values if out_values is None else torch.cat([values, out_values]))

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
            self._views = None  # holding them) stay valid, as λ changes in place
        self._row_cache = {}
        buf[:n].copy_(values, non_blocking=True)
        if pad and n < buf.numel():
            buf[n:].zero_()
        return n

    def get(self):
        """The current λ in the form `set` accepts: a float, a copy of the per-sequence tensor [B], or in
        per-row mode a `RowLambda` of copies."""
        if self.mode is PER_ROW:
            out = None if self.n_out is None else self.out_buf[: self.n_out].detach().clone()
            return RowLambda(self.lam.detach().clone(), out)
        if self.mode is PER_SEQUENCE:
            return self.lam.detach().clone()
        return float(self.buf[0])

    def for_batch(self, batch: int) -> torch.Tensor:
        """λ per sequence [batch] (fp32, on the buffer's device) for an input whose first dim is `batch`."""
        if self.mode is PER_SEQUENCE:
            self._check_batch(batch)
            return self.lam
        return self.buf[:1].expand(batch)

    def for_rows(self, rows: int, output: bool = False) -> tuple[torch.Tensor, int, float | None]:
        """(λ, rows_per_lam, uniform) for a layer input of `rows` token rows (B·T of a [B, T] batch,
        sequence after sequence): row r reads λ[r // rows_per_lam]; λ is [rows] per row, [B] per sequence
        or [1]. output: the layer sees the output rows (the model's output layer, when the engine keeps
        only the logits rows). uniform as in `for_layer`. This is the form `interp_linear_layer` takes
        (as `lam` with `rows_per_lam`)."""
        mode = self.mode
        if mode is PER_ROW:
            if torch.compiler.is_compiling():
                return self._row_view(rows, output)[0], 1, None
            hit = self._row_cache.get((rows, output))  # every layer of a step asks the same two keys
            if hit is None:
                hit = self._row_cache[(rows, output)] = self._row_view(rows, output)
            view, exact = hit
            return view, 1, (self._uniform_now() if exact and self.uniform is not None else None)
        if mode is PER_SEQUENCE:
            if rows % self.n:
                raise ValueError(
                    f"λ holds {self.n} values (one per sequence) but the layer got {rows} "
                    f"rows, not a multiple of {self.n}; set one λ per sequence"
                )
            lam, uniform = self.for_layer(self.n)
            return lam, rows // self.n, uniform
        lam, uniform = self.for_layer(rows)
        return lam, max(rows, 1), uniform

    def _row_view(self, rows: int, output: bool) -> tuple[torch.Tensor, bool]:
        """(λ for `rows` packed rows, whether rows is exactly the number set) in per-row mode."""
        n, buf = (
            (self.n_out, self._buffers["out_buf"])
            if output and self.n_out is not None
            else (self.n, self._buffers["buf"])
        )
        if rows < n or rows > buf.numel():
            raise ValueError(
                f"λ is set for {n} packed token rows (buffer of {buf.numel()}) but the layer "
                f"got {rows} rows; set λ for every row of the packed batch (set_rows)"
            )
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
        per_sequence = self.mode is PER_SEQUENCE
        if per_sequence:
            self._check_batch(batch)
        elif self.mode is PER_ROW:
            raise ValueError("λ is set per packed token row (set_rows); this layer must read it with for_rows")
        if torch.compiler.is_compiling():
            return (self.buf[: self.n] if per_sequence else self.buf[:1]), None
        views = self._views
        buf = self._buffers["buf"]  # (the dict, not nn.Module.__getattr__: this runs once per layer call)
        if views is None or views[2] is not buf:  # views of the current buffer, made once
            views = self._views = (buf[: self.n], buf[:1], buf)
        return views[0] if per_sequence else views[1], self.uniform

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
        return f"{self.mode.value}, n={self.n}, allow_extrapolation={self.allow_extrapolation}"


def _as_vector(values, name: str):
    """A list or 1-D tensor of λ values (per-row mode takes no scalar)."""
    if isinstance(values, torch.Tensor) and values.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor or a list of λ values, got shape {tuple(values.shape)}")
    if not isinstance(values, (torch.Tensor, list, tuple)):
        raise ValueError(f"{name} must be a 1-D tensor or a list of λ values, got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} is empty; give one λ per packed token row")
    return values


def _shared(values: torch.Tensor) -> float | None:
    """The λ all values share, or None."""
    lo, hi = float(values.min()), float(values.max())
    return lo if lo == hi else None


class LambdaBound:
    """Mixin for layers that read λ from a shared LambdaState held by reference (not a submodule)."""

    lam_state: LambdaState  # set by bind_lambda

    def bind_lambda(self, state: LambdaState) -> None:
        if not isinstance(state, LambdaState):
            raise ValueError(f"lam_state must be a LambdaState, got {type(state).__name__}")
        object.__setattr__(self, "lam_state", state)  # plain attribute: not registered as a submodule
