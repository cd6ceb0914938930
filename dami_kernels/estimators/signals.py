"""Pure tensor math for the λ(q) estimators: masked means, confidence and Jensen–Shannon divergence.

No model code here. Every function works on plain tensors whose shapes are stated in its docstring.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over its last dim, counting only positions where mask is True.

    x [..., T] float, mask [..., T] bool -> [...]. A row with no True entry has no mean: ValueError.
    """
    _check_same_shape(x, mask, "x", "mask")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    counts = mask.sum(dim=-1)
    if bool((counts == 0).any()):
        raise ValueError("mask has a row with no True entries; its masked mean is undefined")
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=-1)
    return total / counts.to(x.dtype)


def confidence(probs_max: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """System-1 confidence: the geometric mean of the max token probability over the answer tokens.

        c = exp( (1/|A|) · Σ_{t∈A} log p_t^max ),   A = {t : mask[t]},  p_t^max = max_v p(v | prefix_t)

    probs_max [B, T] in [0, 1], mask [B, T] bool -> c [B] in [0, 1]. c = 1 when the model is certain of
    every answer token; it equals the plain probability when the answer has one token. Probabilities are
    floored at the smallest normal float of their dtype before the log, so c is finite and ≥ 0.
    """
    _check_same_shape(probs_max, mask, "probs_max", "mask")
    if not probs_max.is_floating_point():
        raise ValueError(f"probs_max must be a floating-point tensor, got dtype {probs_max.dtype}")
    if bool(((probs_max < 0) | (probs_max > 1) | ~torch.isfinite(probs_max)).any()):
        raise ValueError("probs_max must hold probabilities in [0, 1]")
    tiny = torch.finfo(probs_max.dtype).tiny
    return masked_mean(probs_max.clamp_min(tiny).log(), mask).exp()


def _plogp_ratio(logp: torch.Tensor, logm: torch.Tensor) -> torch.Tensor:
    """Σ_v p_v (log p_v − log m_v) over the last dim, with the convention 0·log(0/·) = 0."""
    p = logp.exp()
    term = torch.where(p > 0, p * (logp - logm), torch.zeros((), dtype=logp.dtype, device=logp.device))
    return term.sum(dim=-1)


def js_divergence(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence, in nats, between two distributions given as log-probabilities.

        m = (p_a + p_b) / 2
        JSD(p_a, p_b) = ½ KL(p_a ‖ m) + ½ KL(p_b ‖ m)   ∈ [0, ln 2]

    logp_a, logp_b [..., V] (each row a normalised log-distribution, e.g. `log_softmax`; −inf allowed
    for probability zero) -> [...] float32 or float64. It is symmetric, 0 for identical distributions and
    ln 2 for disjoint supports. log m is computed with `logaddexp` (no underflow), terms with p = 0
    count as 0, and the result is clamped to [0, ln 2] to remove rounding error of the sum.
    Inputs in half precision are upcast to float32.
    """
    _check_same_shape(logp_a, logp_b, "logp_a", "logp_b")
    if not logp_a.is_floating_point() or not logp_b.is_floating_point():
        raise ValueError("logp_a and logp_b must be floating-point tensors of log-probabilities")
    if logp_a.dim() < 1 or logp_a.shape[-1] < 1:
        raise ValueError(f"logp_a must have a non-empty last (vocabulary) dim, got {tuple(logp_a.shape)}")
    dtype = torch.promote_types(torch.promote_types(logp_a.dtype, logp_b.dtype), torch.float32)
    la, lb = logp_a.to(dtype), logp_b.to(dtype)
    logm = torch.logaddexp(la, lb) - LN2
    jsd = 0.5 * _plogp_ratio(la, logm) + 0.5 * _plogp_ratio(lb, logm)
    return jsd.clamp(0.0, LN2)
