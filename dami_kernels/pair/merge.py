"""Offline merge: write a plain HF checkpoint whose every tensor is (1-λ)·θ_I + λ·θ_T at one fixed λ.

Floating tensors are merged in fp32 and stored in the Instruct checkpoint's dtype; other tensors (integer,
bool) must have the same dtype and values on both sides: they are never cast. Config, generation config
and tokenizer files are copied from the Instruct directory (a symlink among them must point inside it; the
Thinking tokenizer must be the same unless allow_tokenizer_mismatch=True).
Every merged tensor must be finite: NaN or ±inf in an input, or a λ whose merge overflows the output
dtype, aborts the merge before anything is published (`_check_merged`).
The output is written with `write_output_dir` (fs/outdir.py): checks before any work, a temporary directory
beside `out_dir`, an atomic publish that never deletes data it did not write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dami_kernels.fs.outdir import MARKER, preflight, write_output_dir
from dami_kernels.hf.checkpoint import Checkpoint, open_checkpoint, side_files
from dami_kernels.hf.compat import check_dtypes, check_pair  # noqa: F401 - check_dtypes: check_pair runs it
from dami_kernels.hf.finite import CHUNK, count_nonfinite
from dami_kernels.hf.tokenizer import check_tokenizers
from dami_kernels.modules import blend
from dami_kernels.validation import FP32_MAX, check_finite, check_float32, check_lambda_range, check_real, to_float


def merge_lambda(lam, allow_extrapolation: bool) -> float:
    """λ for merge_pair as a Python float, checked in float64 (one number; finite; in [0, 1] unless opted in).

    Checked here rather than in fp32 so that 1.0000001 is not rounded into [0, 1] and messages show the
    value as given (-0.2, not -0.20000000298023224).
    """
    if isinstance(lam, torch.Tensor):
        if lam.dim() != 0:
            raise ValueError("lam for merge_pair must be one number")
        lam = lam.item()
    lam = to_float(check_real(lam, "lam for merge_pair", "be one number"), "lam")
    check_finite(lam, "lam")
    check_float32(lam, "lam", f"the merge computes in float32, whose largest value is {FP32_MAX:.4g}")
    check_lambda_range(
        lam, "lam", allow_extrapolation, hint="; values outside need an explicit opt-in (allow_extrapolation=True)"
    )
    return lam


def extra_files(ckpt: Checkpoint) -> list[Path]:
    """The non-weight files to copy (config, tokenizer, ...), checked as loading checks them (`side_files`: a
    symlink pointing outside the directory, a FIFO or a device is refused)."""
    return [f for f in side_files(ckpt.path) if f.name != MARKER]


def _merge_tensor(name: str, a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    if a.is_floating_point() and b.is_floating_point():
        return blend(a, b.to(a.dtype), torch.tensor(lam, dtype=torch.float32)).contiguous()
    if a.dtype != b.dtype:
        raise ValueError(
            f"tensor {name!r} is {a.dtype} in one checkpoint and {b.dtype} in the other; "
            "a non-floating-point tensor is never cast"
        )
    if not torch.equal(a, b):
        raise ValueError(f"tensor {name!r} is not floating-point and differs between the checkpoints")
    return a.contiguous()


def _overflowed(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> int:
    """Merged values that are not finite although both inputs are (slices of CHUNK elements)."""
    fa, fb, fm = (t.reshape(-1) for t in (a, b, m))
    n = 0
    for s in range(0, fm.numel(), CHUNK):
        x, y, z = (t[s : s + CHUNK] for t in (fa, fb, fm))
        x, y, z = (
            t if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else t.float()
            for t in (x, y, z)
        )
        n += int((~torch.isfinite(z) & torch.isfinite(x) & torch.isfinite(y)).sum())
    return n


def _check_merged(
    name: str,
    a: torch.Tensor,
    b: torch.Tensor,
    m: torch.Tensor,
    lam: float,
    check_finite: bool,
    paths: tuple[Path, Path],
) -> None:
    """Refuse a merged tensor that holds NaN or ±inf. One read of the merged tensor; the inputs are read only
    when it is not finite (blend's (1-λ)·a + λ·b carries a NaN/inf of either input into the result at every
    λ, 0 and 1 included). An input holding them is named with its side (unless check_finite=False: then
    they are kept); otherwise the merge at λ overflowed the output dtype."""
    if not m.is_floating_point() or not count_nonfinite(m):
        return
    bad_in = [
        (side, count_nonfinite(t), path) for side, t, path in (("instruct", a, paths[0]), ("thinking", b, paths[1]))
    ]
    for side, bad, path in bad_in:
        if bad and check_finite:
            raise ValueError(
                f"{side} checkpoint {path}: tensor {name!r} holds {bad} non-finite values (NaN or "
                "±inf); refusing to merge it (pass check_finite=False to merge it anyway)"
            )
    over = _overflowed(a, b, m) if any(bad for _, bad, _ in bad_in) else count_nonfinite(m)
    if over:
        raise ValueError(
            f"merging at lam={lam!r} overflows {str(m.dtype).replace('torch.', '')}: tensor {name!r} "
            f"gets {over} non-finite merged values (NaN or ±inf); nothing was written. Choose a λ "
            "closer to [0, 1]"
        )


def _write_weights(
    ckpt_i: Checkpoint, ckpt_t: Checkpoint, lam: float, tmp: Path, progress: bool, check_finite: bool = True
) -> None:
    n = len(ckpt_i.files)
    names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    weight_map, total_size = {}, 0
    meta = {"format": "pt", "dami_lambda": repr(lam)}
    with tqdm(total=len(ckpt_i.specs()), desc=f"merging at λ={lam!r}", unit="tensor", disable=not progress) as bar:
        for out_name, (_f, tensors) in zip(names, ckpt_i.iter_files(), strict=True):
            merged = {}
            for name, a in tensors.items():
                b = ckpt_t.get_tensor(name)
                merged[name] = _merge_tensor(name, a, b, lam)
                _check_merged(name, a, b, merged[name], lam, check_finite, (ckpt_i.path, ckpt_t.path))
                del b
                weight_map[name] = out_name
                total_size += merged[name].numel() * merged[name].element_size()
                bar.update(1)
            save_file(merged, str(tmp / out_name), metadata=meta)
            del merged, tensors
    if n > 1:
        index = {"metadata": {"total_size": total_size, "dami_lambda": lam}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def merge_pair(
    instruct_dir,
    thinking_dir,
    lam: float,
    out_dir,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    allow_extrapolation: bool = False,
    progress: bool = True,
    check_finite: bool = True,
    allow_tokenizer_mismatch: bool = False,
) -> Path:
    """Merge the pair at λ into `out_dir` (safetensors, sharded like the Instruct side); returns out_dir.

    The Instruct tokenizer files are copied: a Thinking tokenizer that differs or cannot be loaded is a
    ValueError, as in `load_tokenizer` (a warning with allow_tokenizer_mismatch=True).

    Before anything is written: ValueError for a bad λ (not finite, also in float32), a mismatched pair, an
    integer tensor whose dtype differs, a symlinked extra file pointing outside the Instruct directory, or an
    out_dir that is, contains or lies inside an input; FileExistsError if out_dir exists and overwrite is
    False. While merging, each merged tensor is checked as it is computed: ValueError, with out_dir left
    untouched, when it holds NaN or ±inf, naming the tensor and the side when an input holds them (not
    checked with check_finite=False) or else λ (the merge overflowed the output dtype). overwrite=True
    replaces only a directory that dami_kernels wrote (see `write_output_dir`); out_dir holds the complete
    old or the complete new checkpoint at every instant, also if the process is killed.
    """
    lam = merge_lambda(lam, allow_extrapolation)
    out_dir = Path(out_dir)
    inputs = (instruct_dir, thinking_dir)
    preflight(
        out_dir.absolute(),
        overwrite=overwrite,
        inputs=inputs,
        what="merged checkpoint",
        overwrite_flag="overwrite=True",
    )
    ckpt_i = open_checkpoint(instruct_dir, allow_pickle=allow_pickle)
    ckpt_t = open_checkpoint(thinking_dir, allow_pickle=allow_pickle)
    check_pair(ckpt_i, ckpt_t)  # with the dtype checks of load_pair (compat.check_dtypes)
    check_tokenizers(instruct_dir, thinking_dir, allow_tokenizer_mismatch=allow_tokenizer_mismatch)
    extras = extra_files(ckpt_i)
    with write_output_dir(out_dir, overwrite=overwrite, inputs=inputs, what="merged checkpoint") as tmp:
        _write_weights(ckpt_i, ckpt_t, lam, tmp, progress, check_finite)
        for f in extras:
            shutil.copyfile(f, tmp / f.name)
    return out_dir
