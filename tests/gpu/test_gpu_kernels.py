"""GPU-only checks (skipped without CUDA; run by scripts/gpu_check.sh): bf16 on real Qwen3-4B shapes
against an fp32 reference, CUDA-graph capture and replay with λ updated in place, torch.compile."""

import math

import pytest
import torch

import dami_kernels as dk
from dami_kernels.ops import interp_linear_fp64

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SHAPES = [(9728, 2560), (2560, 9728), (4096, 2560), (1024, 2560), (151936, 2560)]


def rel_err(out, ref):
    if not torch.isfinite(out).all():
        return math.inf
    return ((out.double() - ref).norm() / ref.norm()).item()


def make(m_shape, n, k, dtype=torch.bfloat16):
    x = torch.randn(*m_shape, k, device="cuda").to(dtype)
    w_i = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(dtype)
    w_t = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(dtype)
    return x, w_i, w_t


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("lead", [(1,), (5,), (32,), (64,), (3, 333), (8, 512)])
def test_bf16_real_shapes(n, k, lead):
    if n == 151936 and math.prod(lead) > 64:
        pytest.skip("lm_head prefill: covered by the smaller shapes, keeps the check short")
    x, w_i, w_t = make(lead, n, k)
    for lam in (
        torch.rand(lead, device="cuda"),
        torch.rand(lead[:1], device="cuda"),
        0.3,
        torch.zeros(lead[:1], device="cuda"),
        torch.ones(lead, device="cuda"),
    ):
        out = dk.interp_linear(x, w_i, w_t, lam, backend="triton")
        err = rel_err(out, interp_linear_fp64(x, w_i, w_t, lam))
        assert err <= 1e-2, f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.float32, 3e-4)])
def test_other_dtypes(dtype, tol):
    x, w_i, w_t = make((4, 100), 1000, 768, dtype)
    b_i, b_t = torch.randn(1000, device="cuda").to(dtype), torch.randn(1000, device="cuda").to(dtype)
    lam = torch.rand(4, device="cuda")
    out = dk.interp_linear(x, w_i, w_t, lam, b_i, b_t, backend="triton")
    assert rel_err(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= tol


def test_cuda_graph_replays_with_new_lambda():
    x, w_i, w_t = make((16,), 4096, 2560)
    lam = torch.rand(16, device="cuda")
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (compile) outside the capture
        dk.interp_linear(static_x, w_i, w_t, lam, backend="triton")
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dk.interp_linear(static_x, w_i, w_t, lam, backend="triton")
    for _ in range(3):
        lam.copy_(torch.rand(16, device="cuda"))
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, interp_linear_fp64(static_x, w_i, w_t, lam)) <= 1e-2


def test_torch_compile_inductor():
    x, w_i, w_t = make((2, 64), 1024, 2560)
    lam = torch.rand(2, device="cuda")

    def f(x, lam):
        return torch.relu(dk.interp_linear(x, w_i, w_t, lam, backend="triton", check_finite=False))

    compiled = torch.compile(f, fullgraph=True)
    for _ in range(2):
        lam.copy_(torch.rand(2, device="cuda"))
        ref = torch.relu(interp_linear_fp64(x, w_i, w_t, lam))
        assert rel_err(compiled(x, lam), ref) <= 1e-2
