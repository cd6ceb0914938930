"""The fp64 test oracle of the interpolated linear, written as plainly as possible (the torch backend,
the CPU path, lives in `torch_path.py`)."""

from __future__ import annotations

import torch


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
