"""Pure-torch interpolated linear, written as plainly as possible: the test oracles and the unfused
benchmark baseline (the torch backend's faster paths live in `torch_backend.py`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def interp_linear_rows_ref(x2d, w_i, w_t, lam_rows, bias_i=None, bias_t=None):
    """y = (1-λ_r)(W_I x_r + b_I) + λ_r(W_T x_r + b_T).

    x2d [M, K]; w_i, w_t [N, K]; lam_rows [M] (fp32); biases [N] or None. Returns [M, N] in x's dtype.
    Two F.linear calls (fp32 accumulation inside each) and an fp32 blend.
    """
    y_i = F.linear(x2d, w_i, bias_i).float()
    y_t = F.linear(x2d, w_t, bias_t).float()
    lam = lam_rows.reshape(-1, 1)
    return ((1.0 - lam) * y_i + lam * y_t).to(x2d.dtype)


def interp_linear_fp64(x, w_i, w_t, lam, bias_i=None, bias_t=None):
    """Exact fp64 math for tests: x [..., K], lam float | [] | x.shape[:-1] | x.shape[:1]. Returns fp64."""
    xd, wi, wt = x.double(), w_i.double(), w_t.double()
    y_i = xd @ wi.T
    y_t = xd @ wt.T
    if bias_i is not None:
        y_i = y_i + bias_i.double()
        y_t = y_t + bias_t.double()
    lam = torch.as_tensor(lam, dtype=torch.float64, device=x.device)
    if lam.dim() > 0 and tuple(lam.shape) != tuple(x.shape[:-1]):
        lam = lam.reshape(lam.shape + (1,) * (x.dim() - 1 - lam.dim()))
    lam = lam.unsqueeze(-1)
    return (1.0 - lam) * y_i + lam * y_t
