"""The interpolated experts op: the torch backend against fp64 math, the grouped Triton kernel (under
TRITON_INTERPRET=1 on the CPU) against the same oracle in fp32/fp16/bf16 on odd shapes, every λ form and
every per-tile path, with NaN-poisoned outputs; bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from op_inputs import DEVICE

from dami_kernels.ops import interp_experts, interp_experts_fp64, triton_available
from dami_kernels.ops.common.configs import KernelConfig
from numerics import rel_err

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def make_moe(t=11, h=19, i=13, e=5, k=2, dtype=torch.float32):
    """x [T, H], gate_up_i/_t [E, 2I, H], down_i/_t [E, H, I], top-k routing [T, k] from random logits."""
    x = torch.randn(t, h, device=DEVICE).to(dtype)
    gu_i, gu_t = ((torch.randn(e, 2 * i, h, device=DEVICE) / math.sqrt(h)).to(dtype) for _ in range(2))
    dn_i, dn_t = ((torch.randn(e, h, i, device=DEVICE) / math.sqrt(i)).to(dtype) for _ in range(2))
    w, idx = torch.topk(torch.randn(t, e, device=DEVICE).softmax(-1), k)
    return x, gu_i, gu_t, dn_i, dn_t, idx, (w / w.sum(-1, keepdim=True)).to(dtype)


def lam_forms(t, seqs):
    """Every λ form: number, endpoints, 0-d tensor, per token [T], per sequence [S] (mixed, with 0 and 1)."""
    per_seq = torch.tensor([0.0, 1.0, 0.3, 0.8, 0.55][:seqs], device=DEVICE)
    return {
        "float": 0.3,
        "zero": 0.0,
        "one": 1.0,
        "0d": torch.tensor(0.7, device=DEVICE),
        "token": torch.rand(t, device=DEVICE) * 1.4 - 0.2,
        "seq": per_seq,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_backend_matches_fp64(dtype):
    args = make_moe(dtype=dtype, t=12)
    for name, lam in lam_forms(12, 3).items():
        out = interp_experts(*args, lam, backend="torch")
        assert out.dtype == dtype and out.shape == args[0].shape
        assert rel_err(out, interp_experts_fp64(*args, lam)) < TOL[dtype], name


def test_fp64_oracle_is_the_merged_experts_at_uniform_lambda():
    """At one λ the oracle is transformers-style experts run on fp64-merged weights (a different formula)."""
    x, gu_i, gu_t, dn_i, dn_t, idx, w = make_moe(dtype=torch.float64)
    lam = 0.35
    gu, dn = (1 - lam) * gu_i + lam * gu_t, (1 - lam) * dn_i + lam * dn_t
    ref = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            g, u = (gu[idx[t, j]] @ x[t]).chunk(2)
            ref[t] += w[t, j] * (dn[idx[t, j]] @ (F.silu(g) * u))
    assert rel_err(interp_experts_fp64(x, gu_i, gu_t, dn_i, dn_t, idx, w, lam), ref) < 1e-13


def test_expert_held_elsewhere_adds_nothing():
    x, gu_i, gu_t, dn_i, dn_t, idx, w = make_moe(t=6)
    e = gu_i.shape[0]
    idx2 = idx.clone()
    idx2[:, 1] = e  # transformers' marker for an expert on another rank
    ref = interp_experts_fp64(x, gu_i, gu_t, dn_i, dn_t, idx[:, :1], w[:, :1], 0.4)
    backends = ["torch"] + (["triton"] if triton_available() else [])
    for backend in backends:
        out = interp_experts(x, gu_i, gu_t, dn_i, dn_t, idx2, w, 0.4, backend=backend)
        assert rel_err(out, ref) < 1e-5, backend


def mlp_tol(args, lam, dtype) -> float:
    """Bound for the whole experts MLP (two products, each output rounded, the activation between):
    the op's tolerance, or in bf16 4x the error of a plain bf16 model on fp64-merged bf16 weights,
    whichever is larger (the interpreter rounds fp32 -> bf16 by truncation, about twice RNE's error,
    and the MLP rounds its hidden state before the second product; measured ratio about 3x)."""
    if dtype != torch.bfloat16:
        return TOL[dtype]
    x, gu_i, gu_t, dn_i, dn_t, idx, w = args
    lam_t = torch.as_tensor(lam, dtype=torch.float64, device=x.device).reshape(-1)
    lam_t = lam_t.repeat_interleave(x.shape[0] // lam_t.numel()) if lam_t.numel() > 1 else lam_t.expand(x.shape[0])
    errs = []
    for value in lam_t.unique().tolist():  # the tokens at one λ: a plain model on merged weights
        rows = lam_t == value
        gu = ((1 - value) * gu_i.double() + value * gu_t.double()).to(dtype)
        dn = ((1 - value) * dn_i.double() + value * dn_t.double()).to(dtype)
        plain = interp_experts(x[rows], gu, gu, dn, dn, idx[rows], w[rows], 0.0, backend="torch")
        errs.append(rel_err(plain, interp_experts_fp64(x[rows], gu_i, gu_t, dn_i, dn_t, idx[rows], w[rows], value)))
    return max(TOL[dtype], 4 * max(errs))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_fp64_every_lambda_form(dtype):
    t, seqs = 12, 3
    args = make_moe(t=t, dtype=dtype)
    for name, lam in lam_forms(t, seqs).items():
        out = interp_experts(*args, lam, backend="triton")
        assert out.dtype == dtype and out.shape == args[0].shape
        assert rel_err(out, interp_experts_fp64(*args, lam)) < mlp_tol(args, lam, dtype), (name, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_grouped_launch_is_one_interpolated_linear_per_row(dtype):
    """One grouped launch alone (gathered rows, per-row λ, routing-weight epilogue, scattered rows)
    against fp64 math, at the dense op's tolerance."""
    from dami_kernels.ops.interp_experts.launch import experts_config, launch_grouped, tile_table
    from dami_kernels.ops.interp_experts.torch_path import sort_by_expert

    t, k = 13, 3
    x, gu_i, gu_t, _, _, idx, w = make_moe(t=t, h=23, i=11, e=4, k=k, dtype=dtype)
    order, experts = sort_by_expert(idx)
    tok = (order // k).to(torch.int32)
    lam = torch.rand(t, device=DEVICE) * 1.2 - 0.1
    cfg = experts_config(t * k, 4, 22, 23, gu_i)
    tiles = tile_table(experts, 4, cfg.block_m)
    scale = w.reshape(-1)[order].float()
    out = launch_grouped(x, gu_i, gu_t, lam, 1, tiles, tok, tok, order.to(torch.int32), scale, t * k, cfg)
    lam_p = lam[tok.long()].double().reshape(-1, 1, 1)
    wp = (1 - lam_p) * gu_i[experts].double() + lam_p * gu_t[experts].double()
    ref = torch.einsum("pnh,ph->pn", wp, x[tok.long()].double()) * scale.double().unsqueeze(-1)
    ref = torch.empty_like(ref).index_copy_(0, order, ref)
    assert out.dtype == dtype and rel_err(out, ref) < TOL[dtype]


CONFIGS = {
    "small_tiles": (KernelConfig(16, 16, 16, num_stages=1), KernelConfig(16, 16, 16, num_stages=1)),
    "split_k": (KernelConfig(16, 32, 16, split_k=2, num_stages=1), KernelConfig(16, 16, 16, split_k=3, num_stages=1)),
    "swap_ab": (
        KernelConfig(16, 16, 16, swap_ab=True, num_stages=1),
        KernelConfig(16, 32, 16, split_k=2, swap_ab=True, num_stages=1),
    ),
}


@needs_triton
@pytest.mark.parametrize(
    "cfg,dtype", [("small_tiles", torch.bfloat16), ("split_k", torch.float32), ("swap_ab", torch.float32)]
)
@pytest.mark.slow
def test_triton_paths_and_configs(cfg, dtype):
    """Every per-tile path is taken where it should be (recorded per program) and gives the right result."""
    from dami_kernels.ops.interp_experts.launch import interp_experts_triton
    from dami_kernels.ops.interp_experts.op import lam_tokens_form

    # 2 sequences of 24 tokens, both experts for every token: each expert's 48 sorted rows form four
    # tiles of 16 that follow the sequences (16 + 8 rows each), so every tile holds one λ and blends.
    t = 48
    x, gu_i, gu_t, dn_i, dn_t, idx, w = make_moe(t=t, h=21, i=17, e=2, k=2, dtype=dtype)
    cases = {0.0: {0}, 1.0: {1}, 0.45: {2}, "mixed": {2}}
    for lam_case, expect in cases.items():
        lam = torch.tensor([0.3, 0.8], device=DEVICE) if lam_case == "mixed" else lam_case
        lam_vec, rpl, _ = lam_tokens_form(lam, t, x.device)
        for skip_blend in ((True, True), (False, False)) if lam_case in (0.0, "mixed") else ((True, True),):
            paths = (torch.empty(0, dtype=torch.int32, device=DEVICE), torch.empty(0, dtype=torch.int32, device=DEVICE))
            out = interp_experts_triton(
                x,
                gu_i,
                gu_t,
                dn_i,
                dn_t,
                idx,
                w,
                lam_vec,
                rpl,
                F.silu,
                configs=CONFIGS[cfg],
                skip=skip_blend[0],
                blend=skip_blend[1],
                record_paths=paths,
            )
            ref = interp_experts_fp64(x, gu_i, gu_t, dn_i, dn_t, idx, w, lam)
            assert rel_err(out, ref) < mlp_tol((x, gu_i, gu_t, dn_i, dn_t, idx, w), lam, dtype)
            for p in paths:
                taken = set(p.tolist())
                assert -1 not in taken  # every program ran and recorded
                used = taken - {-2}  # -2: a spare tile of the upper-bound grid
                assert used == (expect if all(skip_blend) else {3}), (lam_case, skip_blend, taken)


@needs_triton
def test_triton_decode_and_odd_sizes():
    """One token, one expert per token, sizes not multiples of any tile; and more experts than tokens."""
    for t, h, i, e, k in ((1, 33, 7, 3, 1), (3, 9, 5, 8, 3), (5, 40, 24, 2, 2)):
        args = make_moe(t=t, h=h, i=i, e=e, k=k)
        lam = torch.rand(t, device=DEVICE)
        out = interp_experts(*args, lam, backend="triton")
        assert rel_err(out, interp_experts_fp64(*args, lam)) < 1e-5, (t, h, i, e, k)


def test_empty_batch():
    args = make_moe(t=0)
    assert interp_experts(*args, 0.5, backend="torch").shape == (0, args[0].shape[1])
    if triton_available():
        assert interp_experts(*args, 0.5, backend="triton").shape == (0, args[0].shape[1])


def test_gradients_flow_on_both_backends():
    """Autograd needs a graph: both backends return the differentiable formulation's gradients."""
    x, gu_i, gu_t, dn_i, dn_t, idx, w = make_moe(t=5, h=6, i=4, e=3, dtype=torch.float64)
    tensors = [x, gu_i, gu_t, dn_i, dn_t]
    for p in tensors:
        p.requires_grad_(True)
    lam = torch.tensor([0.2, 0.9, 0.5, 0.0, 1.0], dtype=torch.float64, device=DEVICE)
    assert torch.autograd.gradcheck(lambda *ts: interp_experts(*ts, idx, w, lam, backend="torch"), tuple(tensors))
    if triton_available():
        f32 = [p.detach().float().requires_grad_(True) for p in tensors]
        out = interp_experts(*f32, idx, w.float(), lam.float(), backend="triton")
        out.square().sum().backward()
        ref = [p.detach().requires_grad_(True) for p in tensors]
        interp_experts_fp64(*ref, idx, w, lam).square().sum().backward()
        for a, b in zip(f32, ref, strict=True):
            assert rel_err(a.grad, b.grad) < 1e-5


def test_bad_inputs_name_the_argument():
    x, gu_i, gu_t, dn_i, dn_t, idx, w = make_moe(t=4)
    good = dict(x=x, gate_up_i=gu_i, gate_up_t=gu_t, down_i=dn_i, down_t=dn_t, top_k_index=idx, top_k_weights=w)
    bad = {
        "x": x[None],
        "gate_up_i": gu_i[:, :-1],
        "gate_up_t": gu_t[:-1],
        "down_i": dn_i[..., :-1],
        "down_t": dn_t.half(),
        "top_k_index": idx.float(),
        "top_k_weights": w[:, :1],
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            interp_experts(**{**good, name: value}, lam=0.5, backend="torch")
    for lam, match in (
        (float("nan"), "finite"),
        (torch.tensor([0.1, math.inf, 0.2, 0.3], device=DEVICE), "finite"),
        (torch.rand(3, device=DEVICE), "lam holds 3"),
        (torch.rand(2, 2, device=DEVICE), "lam must"),
    ):
        with pytest.raises(ValueError, match=match):
            interp_experts(**good, lam=lam, backend="torch")
