"""Refuse NaN and ±inf in weights, reading each tensor once and without a full-size temporary.

A tensor is checked in place, in slices of at most CHUNK elements. The fast test of a slice is one
reduction: for float32, float64 and bfloat16 its sum (a NaN or ±inf among the values makes the sum NaN or
±inf); for float16, whose range a sum of ordinary weights can exceed, its minimum and maximum (NaN
propagates). Only a slice that fails the fast test (a sum that overflowed, or a real NaN/inf) is counted
exactly, with `torch.isfinite` on that slice. Other floating dtypes (float8) are checked on a float32 copy
of each slice. `load_pair` checks both loaded models before pairing them; `merge_pair` checks each merged
tensor as it is computed (pair/merge.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

CHUNK = 1 << 26  # elements per slice: at most 64M elements are looked at by one reduction

_SUM_TESTED = (torch.float32, torch.float64, torch.bfloat16)
_NATIVE = _SUM_TESTED + (torch.float16,)


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor"  # no torch.distributed import on the common path


def _slices(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """Views of `t` of at most CHUNK elements each that together cover it (no copy)."""
    if t.numel() <= CHUNK:
        yield t
    elif t.dim() == 1:
        for start in range(0, t.numel(), CHUNK):
            yield t[start : start + CHUNK]
    elif t[0].numel() > CHUNK:  # one row is still too large: split each row
        for row in t:
            yield from _slices(row)
    else:  # blocks of whole rows along dim 0 (not a flat view: 2-D sums vectorize best)
        rows = CHUNK // t[0].numel()
        for start in range(0, t.shape[0], rows):
            yield t[start : start + rows]


def _count_nonfinite(x: torch.Tensor) -> int:
    if x.dtype not in _NATIVE:
        x = x.float()
    return int(x.numel() - torch.isfinite(x).sum())


def _slice_nonfinite(x: torch.Tensor) -> int:
    """Number of non-finite values in one slice (0 after one reduction in the common case)."""
    if x.dtype in _SUM_TESTED:
        if bool(torch.isfinite(x.sum())):
            return 0
    elif x.dtype == torch.float16:
        lo, hi = torch.aminmax(x.reshape(-1) if x.dim() == 0 else x)
        if bool(torch.isfinite(lo) & torch.isfinite(hi)):
            return 0
    return _count_nonfinite(x)


def count_nonfinite(t: torch.Tensor) -> int:
    """How many values of `t` are NaN or ±inf (0 for non-floating tensors; the local shard of a DTensor)."""
    if _is_dtensor(t):
        t = t.to_local()
    if not t.is_floating_point() or t.numel() == 0:
        return 0
    t = t.detach()
    return sum(_slice_nonfinite(x) for x in _slices(t))


def _model_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Each parameter and persistent buffer once (tied tensors under their first name), in model order."""
    from dami_kernels.modules import stored_tensors

    seen, out = set(), []
    for name, t in stored_tensors(model).items():
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t))
    return out


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int] | None:
    """(name, count) of the first tensor holding NaN or ±inf, or None."""
    for name, t in named:
        bad = count_nonfinite(t)
        if bad:
            return name, bad
    return None


def check_model_finite(model: torch.nn.Module, side: str, path) -> None:
    """ValueError naming the first parameter or persistent buffer of `model` (the `side` checkpoint at
    `path`) that holds NaN or ±inf. Under tensor parallelism every rank checks its shards and all ranks
    agree on the first bad tensor (one all-reduce), so that they all raise together."""
    named = _model_tensors(model)
    found = None
    for k, (_name, t) in enumerate(named):
        bad = count_nonfinite(t)
        if bad:
            found = (k, bad)
            break
    shards = [t for _, t in named if _is_dtensor(t)]
    if shards:
        found = _agree(found, named, shards[0].to_local().device)
    if found is not None:
        k, bad = found
        raise ValueError(
            f"{side} checkpoint {path}: tensor {named[k][0]!r} holds {bad} non-finite values (NaN or ±inf); "
            "refusing to load it (pass check_finite=False to load it anyway)"
        )


def _agree(found, named, device) -> tuple[int, int] | None:
    """(index, count over all ranks) of the first tensor that holds NaN or ±inf on any rank, or None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return found
    n = len(named)
    first = torch.tensor([found[0] if found else n], device=device)
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    k = int(first.item())
    if k >= n:
        return None
    t = named[k][1]
    bad = torch.tensor([found[1] if found and found[0] == k else count_nonfinite(t)], device=device)
    sharded = _is_dtensor(t) and any(p.is_shard() for p in t.placements)
    dist.all_reduce(bad, op=dist.ReduceOp.SUM if sharded else dist.ReduceOp.MAX)  # a replicated tensor once
    return k, int(bad.item())
