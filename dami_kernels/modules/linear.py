"""InterpLinear: an nn.Linear whose output is blended per sequence between two weight sets."""
from __future__ import annotations

import torch
from torch import nn

from dami_kernels.modules.lambda_state import LambdaBound, LambdaState
from dami_kernels.ops import interp_linear


class InterpLinear(LambdaBound, nn.Linear):
    """y = (1-λ_b)(W_I x + b_I) + λ_b(W_T x + b_T), λ_b per sequence from the shared LambdaState.

    ``weight``/``bias`` are the Instruct side [N, K]/[N], ``weight_t``/``bias_t`` the Thinking side.
    Input x [B, ..., K] whose first dim is the batch; output [B, ..., N] in x's dtype.
    """

    def __init__(self, in_features, out_features, bias=True, *, lam_state: LambdaState, backend=None,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.bind_lambda(lam_state)
        self.backend = backend
        self.weight_t = nn.Parameter(torch.empty_like(self.weight), requires_grad=False)
        if bias:
            self.bias_t = nn.Parameter(torch.empty_like(self.bias), requires_grad=False)
        else:
            self.register_parameter("bias_t", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, lam_state: LambdaState, weight_t: nn.Parameter,
                    bias_t: nn.Parameter | None, backend=None) -> "InterpLinear":
        """Wrap `linear`, keeping its weight/bias Parameter objects (so ties survive) as the Instruct side."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, lam_state=lam_state,
                  backend=backend, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight_t = weight_t
        new.bias_t = bias_t
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"InterpLinear needs x [B, ..., K] with the batch first, got shape {tuple(x.shape)}")
        lam = self.lam_state.for_batch(x.shape[0])
        return interp_linear(x, self.weight, self.weight_t, lam, self.bias, self.bias_t,
                             backend=self.backend, check_finite=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend or 'default'}"
