"""Kernel readiness: exact fp32 unless TF32 is switched on, 64-bit offsets, autograd, edge cases,
path-independent results and the number of kernels per call. Triton runs through the interpreter on
the CPU (conftest), so what only the sm_90 build can show is in tests/ops/test_compile_check.py."""

import subprocess
import sys
import textwrap

import pytest
import torch
from op_inputs import DEVICE, make

import dami_kernels as dk
from dami_kernels.ops import interp_linear_fp64, triton_available
from numerics import rel_err as rel

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


# --- 1. fp32 is exact fp32; TF32 only through torch's own switch -------------------------------------


@needs_triton
def test_fp32_uses_ieee_products_unless_torch_tf32_switch_is_on():
    """The kernel's tl.dot precision follows torch's switch, as cuBLAS does (checked on the launch
    arguments here; tests/ops/test_compile_check.py checks that the sm_90 build has no TF32 instruction)."""
    res = run_python("""
        import os; os.environ["TRITON_INTERPRET"] = "1"
        import torch
        from dami_kernels.ops.common import launch as common_launch
        from dami_kernels.ops.interp_linear.launch import launch_interp_linear
        seen = []
        real = common_launch.launch_kernel
        def spy(kernel, grid, args, kwargs):
            if "PRECISION" in kwargs:
                seen.append(kwargs["PRECISION"])
            real(kernel, grid, args, kwargs)
        common_launch.launch_kernel = spy
        def run(dtype):
            x, w = torch.randn(3, 16).to(dtype), torch.randn(8, 16).to(dtype)
            launch_interp_linear(x, w, w.clone(), torch.rand(3), None, None, 1)
            return seen[-1]
        out = [run(torch.float32), run(torch.bfloat16)]
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        out += [run(torch.float32), run(torch.bfloat16)]
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        out += [run(torch.float32)]
        print(",".join(out))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "ieee,ieee,tf32,ieee,ieee"
    legacy = run_python("""
        import torch
        from dami_kernels.ops.common.launch import tf32_enabled
        a = tf32_enabled()
        torch.set_float32_matmul_precision("high")
        b = tf32_enabled()
        torch.set_float32_matmul_precision("highest")
        print(a, b, tf32_enabled())
    """)
    assert legacy.returncode == 0, legacy.stderr
    assert legacy.stdout.split() == ["False", "True", "False"]


# --- 2. 64-bit offsets --------------------------------------------------------------------------------


def test_int64_offsets_are_chosen_exactly_when_an_offset_can_reach_2_31():
    from dami_kernels.ops.interp_linear.launch import needs_int64, plan_launch

    n, k = 151936, 2560  # the lm_head
    # Output offsets reach M*N: 14,134 rows fit in i32, 14,135 do not (the sweep's full-logit case).
    assert not needs_int64(14134, n, k, (k, 1), (k, 1), 1, 64)
    assert needs_int64(14135, n, k, (k, 1), (k, 1), 1, 64)
    # A big x stride alone also needs it; small launches keep i32.
    assert needs_int64(3, 64, 64, (2**30 + 64, 1), (64, 1), 1, 32)
    assert not needs_int64(64, 9728, 2560, (2560, 1), (2560, 1), 4, 64)
    plan = plan_launch(16384, n, k, torch.bfloat16, torch.device("cpu"), 16384, (k, 1), (k, 1))
    assert plan.int64
    assert not plan_launch(16, n, k, torch.bfloat16, torch.device("cpu"), 16, (k, 1), (k, 1)).int64


INT64_PROBE = """
    import os, sys, math; os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from dami_kernels.ops.interp_linear import launch as tl_mod
    from dami_kernels.ops.interp_linear.reference import interp_linear_fp64
    torch.manual_seed(0)
    k, n, m, stride = 40, 24, 3, 2**30 + 64   # row 2 starts at element 2**31 + 128: past i32
    base = torch.empty(stride * (m - 1) + k, dtype=torch.float16)  # 4 GiB of address space, untouched
    x = base.as_strided((m, k), (stride, 1))
    for r in range(m):
        x[r].copy_(torch.randn(k).half())
    w_i = (torch.randn(n, k) / math.sqrt(k)).half()
    w_t = (torch.randn(n, k) / math.sqrt(k)).half()
    lam = torch.rand(m)
    if FORCE_I32:
        tl_mod.needs_int64 = lambda *a, **kw: False
    out = tl_mod.launch_interp_linear(x, w_i, w_t, lam, None, None, 1)
    ref = interp_linear_fp64(x.clone(), w_i, w_t, lam)
    print("ERR", ((out.double() - ref).norm() / ref.norm()).item())
"""


@needs_triton
@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter probe (the GPU runs the real launch)")
def test_int64_offsets_read_rows_beyond_2_31_elements():
    """A real launch whose x offsets pass 2**31 (a subprocess: 32-bit offsets crash or read garbage)."""
    res = run_python("FORCE_I32 = False\n" + textwrap.dedent(INT64_PROBE))
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.split("ERR")[-1]) <= 3e-3
    # The same launch with 32-bit offsets forced: the test above can fail.
    bad = run_python("FORCE_I32 = True\n" + textwrap.dedent(INT64_PROBE))
    assert bad.returncode != 0 or float(bad.stdout.split("ERR")[-1]) > 3e-3


# --- 5. autograd ----------------------------------------------------------------------------------------

LAM_FORMS = {
    "per_row": lambda lead: torch.rand(lead, dtype=torch.float64, device=DEVICE),
    "per_seq": lambda lead: torch.rand(lead[:1], dtype=torch.float64, device=DEVICE),
    "scalar_tensor": lambda lead: torch.rand((), dtype=torch.float64, device=DEVICE),
}


@pytest.mark.parametrize("form", list(LAM_FORMS))
def test_gradcheck_fp64_torch_backend(form):
    x, w_i, w_t, b_i, b_t = (t.double() for t in make((2, 3), 5, 7))
    lam = LAM_FORMS[form]((2, 3)) * 1.4 - 0.2
    inputs = [t.detach().requires_grad_() for t in (x, w_i, w_t, lam, b_i, b_t)]

    def f(x, w_i, w_t, lam, b_i, b_t):
        return dk.interp_linear(x, w_i, w_t, lam, b_i, b_t, backend="torch")

    assert torch.autograd.gradcheck(f, inputs)


@needs_triton
@pytest.mark.parametrize("form", list(LAM_FORMS))
@pytest.mark.parametrize("bias", [True, False])
def test_triton_gradients_equal_torch_gradients(form, bias):
    """Every gradient (x, both weights, both biases, λ) of the Triton op equals the torch backend's."""
    lead = (3, 5)
    x, w_i, w_t, b_i, b_t = make(lead, 17, 40, bias=bias)
    lam = (LAM_FORMS[form](lead) * 1.4 - 0.2).float()
    dy = torch.randn(*lead, 17, device=DEVICE)
    grads = {}
    for backend in ("torch", "triton"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w_i, w_t, lam) + ((b_i, b_t) if bias else ())]
        y = dk.interp_linear(*leaves[:4], *(leaves[4:] or (None, None)), backend=backend, check_finite=False)
        y.backward(dy)
        grads[backend] = [t.grad for t in leaves]
    names = ("x", "w_i", "w_t", "lam", "b_i", "b_t")[: len(grads["torch"])]  # no bias: no bias gradients
    for name, g_ref, g in zip(names, grads["torch"], grads["triton"], strict=True):
        assert g is not None and g.shape == g_ref.shape, name
        assert rel(g, g_ref) <= 1e-5, f"d{name}: {rel(g, g_ref):.2e}"


@needs_triton
def test_lora_style_training_step_through_triton_op():
    """A trainable adapter on top of a frozen pair layer gets gradients through the custom op."""
    x, w_i, w_t, b_i, b_t = make((4, 6), 12, 20)
    a = torch.zeros(12, 20, device=DEVICE, requires_grad=True)  # a weight delta added to both sides
    lam = torch.rand(4, device=DEVICE)
    y = dk.interp_linear(x, w_i + a, w_t + a, lam, b_i, b_t, backend="triton")
    y.square().sum().backward()
    ref_a = torch.zeros(12, 20, device=DEVICE, requires_grad=True)
    dk.interp_linear(x, w_i + ref_a, w_t + ref_a, lam, b_i, b_t, backend="torch").square().sum().backward()
    assert rel(a.grad, ref_a.grad) <= 1e-5


# --- 6. edge cases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_k_zero_gives_the_blended_bias(backend):
    x, w_i, w_t, b_i, b_t = make((3, 2), 6, 0)
    lam = torch.rand(3, device=DEVICE)
    out = dk.interp_linear(x, w_i, w_t, lam, b_i, b_t, backend=backend)
    assert rel(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= 1e-6
    assert torch.equal(dk.interp_linear(x, w_i, w_t, lam, backend=backend), torch.zeros(3, 2, 6, device=DEVICE))


@needs_triton
def test_weights_with_different_strides_are_refused_not_copied_per_call():
    x, w_i, w_t, _, _ = make((4,), 6, 8)
    w_t_other = w_t.t().contiguous().t()  # same values, column-major
    with pytest.raises(ValueError, match="same strides"):
        dk.interp_linear(x, w_i, w_t_other, torch.rand(4, device=DEVICE), backend="triton")


def test_interp_linear_fixes_mismatched_strides_once_at_construction():
    from torch import nn

    from dami_kernels.modules import InterpLinear, LambdaState

    lin = nn.Linear(8, 6)
    w_t = nn.Parameter(torch.randn(8, 6).t(), requires_grad=False)  # [6, 8] with strides (1, 6)
    layer = InterpLinear.from_linear(lin, LambdaState(0.5), w_t, nn.Parameter(torch.randn(6)))
    assert layer.weight.stride() == layer.weight_t.stride() == (8, 1)
    assert torch.equal(layer.weight_t, w_t)


def test_meta_lambda_is_a_value_error_naming_lam():
    x, w_i, w_t, _, _ = make((4,), 6, 8)
    with pytest.raises(ValueError, match="lam"):
        dk.interp_linear(x, w_i, w_t, torch.rand(4, device="meta"), backend="torch")
    from dami_kernels.modules import validate_lambda

    with pytest.raises(ValueError, match="meta"):
        validate_lambda(torch.rand(4, device="meta"), False)


# --- 7. a sequence's result does not depend on what else is in its batch ----------------------------------

# Stated bound (README "Precision"): the blend path rounds the blended weight tile to the weights'
# dtype before the product (as a merged checkpoint would be), the dual path blends two fp32 results.
# The two agree to fp32 rounding for fp32 and to the rounding of W(λ) for 16-bit weights.
ALONE_VS_BATCH_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@needs_triton
@pytest.mark.parametrize("dtype", list(ALONE_VS_BATCH_TOL), ids=str)
@pytest.mark.parametrize("tokens", [1, 40])
def test_sequence_alone_equals_sequence_in_mixed_batch(dtype, tokens):
    x, w_i, w_t, b_i, b_t = make((3, tokens), 50, 96, dtype)
    lam = torch.tensor([0.3, 0.8, 0.55], device=DEVICE)
    batch = dk.interp_linear(x, w_i, w_t, lam, b_i, b_t, backend="triton")
    for s in range(3):
        alone = dk.interp_linear(x[s : s + 1], w_i, w_t, lam[s : s + 1], b_i, b_t, backend="triton")
        assert rel(alone[0], batch[s]) <= ALONE_VS_BATCH_TOL[dtype], f"sequence {s}"


# --- host side: kernels per call -----------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("m", [4, 100])
def test_one_kernel_per_linear(monkeypatch, m):
    """Decode (split-K, reduced inside the kernel) and prefill each issue one kernel, nothing else."""
    from dami_kernels.ops.common import launch as common_launch
    from dami_kernels.ops.common.configs import KernelConfig
    from dami_kernels.ops.interp_linear.launch import launch_interp_linear

    launches = []
    real = common_launch.launch_kernel
    monkeypatch.setattr(common_launch, "launch_kernel", lambda *a: (launches.append(a[0]), real(*a)))
    x, w_i, w_t, b_i, b_t = make((m,), 33, 128)
    cfg = KernelConfig(16 if m <= 16 else 32, 32, 32, split_k=2 if m <= 16 else 1, group_m=1, num_stages=1)
    lam = torch.rand(m, device=DEVICE)
    out = launch_interp_linear(x, w_i, w_t, lam, b_i, b_t, 1, config=cfg)
    assert len(launches) == 1
    assert rel(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= 1e-5


@needs_triton
def test_layer_entry_keeps_leading_dims_of_strided_inputs():
    """The layers' lean path (no reshape of contiguous inputs) on a sliced 3-D input, as HF's
    `hidden_states[:, -1:, :]` before the lm_head: same shape and values as the torch backend."""
    from torch import nn

    from dami_kernels.modules import InterpLinear, LambdaState

    state = LambdaState(torch.tensor([0.2, 0.9]), device=DEVICE)
    lin = nn.Linear(24, 10, device=DEVICE)
    w_t, b_t = nn.Parameter(torch.randn(10, 24, device=DEVICE)), nn.Parameter(torch.randn(10, device=DEVICE))
    layers = [InterpLinear.from_linear(lin, state, w_t, b_t, backend=b) for b in ("triton", "torch")]
    h = torch.randn(2, 5, 24, device=DEVICE)
    for x in (h, h[:, -1:, :], h.transpose(0, 1).contiguous().transpose(0, 1)):
        with torch.no_grad():
            out, ref = layers[0](x), layers[1](x)
        assert out.shape == ref.shape == x.shape[:-1] + (10,)
        assert rel(out, ref) <= 1e-5
