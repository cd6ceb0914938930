"""InterpLinear: an nn.Linear whose output is blended per sequence between two weight sets."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dami_kernels.modules.blending import token_rows
from dami_kernels.modules.lambda_state import LambdaBound, LambdaState
from dami_kernels.ops.common.backend import resolve_backend
from dami_kernels.ops.interp_linear import interp_linear_layer, layer_memo

_MEMO_MISSES = 8  # a layer whose launch memo missed this many calls in a row stops making memos


class ResolvedBackend:
    """Mixin for layers with a ``backend`` setting: `_backend_name(x)` resolves it for x's device and
    remembers the answer per (setting, CUDA or not)."""

    backend: str | None = None
    _resolved: tuple[str | None, bool, str] | None = None  # (backend, x.is_cuda, "triton" | "torch") of the last call

    def _backend_name(self, x: torch.Tensor) -> str:
        """The resolved backend, remembered per (backend setting, CUDA or not): $DAMI_BACKEND is read
        when a layer first runs on a device type (resolving on every call costs more host time than
        the rest of a decode call)."""
        if torch.compiler.is_compiling():
            return resolve_backend(self.backend, x.device)
        cached = self._resolved
        if cached is None or cached[1] is not x.is_cuda or cached[0] != self.backend:
            cached = self._resolved = (self.backend, x.is_cuda, resolve_backend(self.backend, x.device))
        return cached[2]


def same_layout(p: torch.Tensor, p_t: nn.Parameter) -> nn.Parameter:
    """The Thinking Parameter with the Instruct one's strides (the kernels need both alike; fixed once
    here, never per call). The Instruct side is made contiguous in place when they differ."""
    if p_t.device.type == "meta" or p_t.stride() == p.stride():
        return p_t
    p.data = p.data.contiguous()
    return nn.Parameter(p_t.detach().contiguous(), requires_grad=p_t.requires_grad)


class InterpLinear(ResolvedBackend, LambdaBound, nn.Linear):
    """y = (1-λ_b)(W_I x + b_I) + λ_b(W_T x + b_T), λ_b per sequence from the shared LambdaState.

    ``weight``/``bias`` are the Instruct side [N, K]/[N], ``weight_t``/``bias_t`` the Thinking side.
    Input x [B, ..., K] whose first dim is the batch; output [B, ..., N] in x's dtype.
    When the λ state knows on the host that every sequence shares one λ, the op takes the cheaper
    path for it (one weight at an endpoint, one blended GEMM in prefill on the torch backend).
    With λ per packed token row (`LambdaState.set_rows`), row r of x [B, T, ..., K] reads its token's λ;
    ``output_rows = True`` marks the model's output layer, which then reads the state's output rows
    (set by a continuous-batching engine that keeps only the logits rows).
    """

    output_rows = False
    weight_t: nn.Parameter
    bias_t: nn.Parameter | None

    def __init__(
        self, in_features, out_features, bias=True, *, lam_state: LambdaState, backend=None, device=None, dtype=None
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.bind_lambda(lam_state)
        self.backend = backend
        # [ops.interp_linear.launch.LaunchMemo | None, backend setting, misses in a row]: the last eager Triton launch,
        # a list so that a hit updates it without nn.Module.__setattr__ (µs per call)
        self._memo: list[Any] = [None, None, 0]
        self.weight_t = nn.Parameter(torch.empty_like(self.weight), requires_grad=False)
        if bias:
            self.bias_t = nn.Parameter(torch.empty_like(self.bias), requires_grad=False)
        else:
            self.register_parameter("bias_t", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        lam_state: LambdaState,
        weight_t: nn.Parameter,
        bias_t: nn.Parameter | None,
        backend=None,
    ) -> InterpLinear:
        """Wrap `linear`, keeping its weight/bias Parameter objects (so ties survive) as the Instruct side."""
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            lam_state=lam_state,
            backend=backend,
            device="meta",
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight_t = same_layout(linear.weight, weight_t)
        new.bias_t = bias_t
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"InterpLinear needs x [B, ..., K] with the batch first, got shape {tuple(x.shape)}")
        state = self.lam_state
        # one dict instead of four nn.Module.__getattr__ calls (decode host time); weight and weight_t are
        # never None, bias and bias_t may be
        p: dict[str, Any] = self._parameters
        if state.per_row:
            lam, _, uniform = state.for_rows(token_rows(x.shape), self.output_rows)
        else:
            lam, uniform = state.for_layer(x.shape[0])
            memo = self._memo
            if (
                memo[0] is not None
                and not torch.is_grad_enabled()
                and memo[1] == self.backend
                and memo[0].matches(x, p["weight"], p["weight_t"], lam, p["bias"], p["bias_t"], uniform is not None)
            ):
                memo[2] = 0
                return memo[0].launch(x)  # eager decode: the same launch as the last call, on new data
        backend = self._backend_name(x)
        y = interp_linear_layer(x, p["weight"], p["weight_t"], lam, p["bias"], p["bias_t"], uniform, backend)
        memo = self._memo
        if (
            backend == "triton"
            and not state.per_row
            and memo[2] < _MEMO_MISSES
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            memo[:] = (
                layer_memo(x, p["weight"], p["weight_t"], lam, p["bias"], p["bias_t"], uniform),
                self.backend,
                memo[2] + 1,
            )
        return y

    def _apply(self, fn, recurse=True):
        self._memo[0] = None  # .to()/.half()/.cuda() may change the weights' dtype, device or strides in place
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend or 'default'}"
