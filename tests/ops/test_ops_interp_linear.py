"""interp_linear: every backend and kernel path against fp64 math, every λ form, bad inputs.

On a CPU-only machine the Triton kernels run through the interpreter (conftest sets TRITON_INTERPRET=1).
Outputs are poisoned with NaN before every kernel run, so an unwritten tile fails.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_inputs import DEVICE, make

import dami_kernels as dk
from dami_kernels.ops import interp_linear_fp64, triton_available
from dami_kernels.ops.common.backend import resolve_backend
from dami_kernels.ops.common.configs import KernelConfig, m_bucket, pick_config
from numerics import rel_err

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
TOL = {torch.float32: 1e-5 if DEVICE == "cpu" else 3e-4, torch.float16: 3e-3, torch.bfloat16: 1e-2}
DTYPES = list(TOL)


def lam_forms(lead):
    """Every λ form for x.shape[:-1] == lead, with mixed, uniform and endpoint values."""
    b = lead[0]
    return {
        "float": 0.37,
        "float0": 0.0,
        "float1": 1.0,
        "extrapolate": -0.4,
        "0d": torch.tensor(0.81),
        "per_row": torch.rand(lead),
        "per_seq": torch.rand(b),
        "per_seq_endpoints": torch.tensor([float(i % 2) for i in range(b)]),
        "per_row_zeros": torch.zeros(lead),
        "per_row_ones": torch.ones(lead),
        "per_row_extrapolate": torch.rand(lead) * 3 - 1,
    }


def check(x, w_i, w_t, lam, b_i, b_t, backend, dtype=None):
    lam_dev = lam.to(DEVICE) if isinstance(lam, torch.Tensor) else lam
    out = dk.interp_linear(x, w_i, w_t, lam_dev, b_i, b_t, backend=backend)
    ref = interp_linear_fp64(x, w_i, w_t, lam_dev, b_i, b_t)
    assert out.shape == ref.shape and out.dtype == x.dtype
    err = rel_err(out, ref)
    assert err <= TOL[dtype or x.dtype], f"relative error {err:.2e}"


BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
SHAPES = [((1,), 37, 45), ((5,), 50, 70), ((3, 7), 33, 100), ((2, 40), 48, 64), ((70,), 19, 130)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,n,k", SHAPES)
def test_matches_fp64_every_lambda_form(backend, dtype, lead, n, k):
    if backend == "torch" and dtype != torch.float32 and DEVICE == "cpu":
        pass  # the CPU reference runs fp16/bf16 through F.linear; same tolerance applies
    x, w_i, w_t, b_i, b_t = make(lead, n, k, dtype)
    for name, lam in lam_forms(lead).items():
        try:
            check(x, w_i, w_t, lam, b_i, b_t, backend)
        except AssertionError as err:
            raise AssertionError(f"lam form {name}: {err}") from None


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_non_contiguous_and_3d(backend):
    x_full, w_i, w_t, _, _ = make((6, 9), 29, 83, torch.float32, bias=False)
    x = x_full.transpose(0, 1)  # [9, 6, K], non-contiguous
    assert not x.is_contiguous()
    check(x, w_i, w_t, torch.rand(9, 6), None, None, backend)
    check(x, w_i, w_t, torch.rand(9), None, None, backend)
    x2 = torch.randn(40, 2 * 83, device=DEVICE)[:, ::2]  # strided K
    check(x2, w_i, w_t, torch.rand(40), None, None, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, w_i, w_t, b_i, b_t = make((0, 3), 17, 24, torch.float32)
    out = dk.interp_linear(x, w_i, w_t, torch.rand(0, 3, device=DEVICE), b_i, b_t, backend=backend)
    assert out.shape == (0, 3, 17)


# --- the kernel paths, each reached on purpose -------------------------------------------------


def run_kernel(x2d, w_i, w_t, lam_rows, b_i, b_t, seg_len, **kw):
    """The launcher with λ given per row ([M], rows_per_lam=1) unless kw says otherwise."""
    from dami_kernels.ops.interp_linear.launch import launch_interp_linear

    return launch_interp_linear(x2d, w_i, w_t, lam_rows.to(DEVICE).float().contiguous(), b_i, b_t, seg_len, **kw)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("side", [0.0, 1.0])
def test_endpoint_skip_reads_one_weight(dtype, side):
    """All rows at one endpoint: the other weight is never read (NaN there would reach the output)."""
    x, w_i, w_t, b_i, b_t = make((70,), 45, 77, dtype)
    lam = torch.full((70,), side, device=DEVICE)
    ref = interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)
    unused = torch.full_like(w_t, math.nan)
    paths = torch.empty(0, dtype=torch.int32, device=DEVICE)
    if side == 0.0:
        out = run_kernel(x, w_i, unused, lam, b_i, b_t, 70, record_path=paths)
    else:
        out = run_kernel(x, unused, w_t, lam, b_i, b_t, 70, record_path=paths)
    assert rel_err(out, ref) <= TOL[dtype]
    assert paths.tolist() == [int(side)] * paths.numel()
    # With skipping off the NaN weight is read, proving the test can fail.
    out_noskip = run_kernel(x, w_i, unused, lam, b_i, b_t, 70, skip=False) if side == 0.0 else None
    if out_noskip is not None:
        assert not torch.isfinite(out_noskip).all()


@needs_triton
@pytest.mark.parametrize("swap_ab", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dual_accumulator_path(dtype, swap_ab):
    """Mixed λ, and uniform λ with skip/blend disabled, go through the two-accumulator path."""
    x, w_i, w_t, b_i, b_t = make((45,), 38, 90, dtype)
    cfg = KernelConfig(32, 32, 32, group_m=4, num_stages=1, swap_ab=swap_ab)
    for lam, flags in (
        (torch.rand(45, device=DEVICE), {}),
        (torch.full((45,), 0.25, device=DEVICE), dict(blend=False)),
        (torch.zeros(45, device=DEVICE), dict(skip=False, blend=False)),
    ):
        paths = torch.empty(0, dtype=torch.int32, device=DEVICE)
        out = run_kernel(x, w_i, w_t, lam, b_i, b_t, 1, config=cfg, record_path=paths, **flags)
        assert rel_err(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= TOL[dtype]
        assert paths.tolist() == [3] * paths.numel()


@needs_triton
@pytest.mark.parametrize("swap_ab", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_blend_in_registers_path(dtype, swap_ab):
    """Uniform λ (one prefill sequence): every tile blends the weights and runs one product."""
    x, w_i, w_t, b_i, b_t = make((64,), 40, 96, dtype)
    cfg = KernelConfig(32, 32, 32, group_m=4, num_stages=1, swap_ab=swap_ab)
    for lam_value in (0.3, -0.25, 1.4):
        lam = torch.full((64,), lam_value, device=DEVICE)
        paths = torch.empty(0, dtype=torch.int32, device=DEVICE)
        out = run_kernel(x, w_i, w_t, lam, b_i, b_t, 64, config=cfg, record_path=paths)
        assert rel_err(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= TOL[dtype]
        assert paths.tolist() == [2] * paths.numel()


@needs_triton
@pytest.mark.parametrize("seq_len", [32, 40, 50])
def test_row_tiles_follow_sequences(seq_len):
    """Per-sequence λ with sequences longer than a tile: every tile stays inside one sequence, so every
    tile takes the blend path (a tile straddling two sequences would need the dual path)."""
    b, n, k = 3, 33, 70
    x, w_i, w_t, b_i, b_t = make((b, seq_len), n, k, torch.float32)
    lam_seq = torch.rand(b, device=DEVICE)
    lam_rows = lam_seq.repeat_interleave(seq_len)
    cfg = KernelConfig(32, 32, 32, group_m=2, num_stages=1)
    assert cfg.follow_segments(seq_len, b * seq_len)
    paths = torch.empty(0, dtype=torch.int32, device=DEVICE)
    out = run_kernel(x.reshape(-1, k), w_i, w_t, lam_rows, b_i, b_t, seq_len, config=cfg, record_path=paths)
    ref = interp_linear_fp64(x, w_i, w_t, lam_seq, b_i, b_t).reshape(-1, n)
    assert rel_err(out, ref) <= TOL[torch.float32]
    assert paths.tolist() == [2] * paths.numel()
    # Without segment tiling the same rows straddle tiles and the mixed tiles fall back to dual.
    paths_flat = torch.empty(0, dtype=torch.int32, device=DEVICE)
    out = run_kernel(x.reshape(-1, k), w_i, w_t, lam_rows, b_i, b_t, 1, config=cfg, record_path=paths_flat)
    assert rel_err(out, ref) <= TOL[torch.float32]
    assert (3 in paths_flat.tolist()) == (seq_len % cfg.block_m != 0)


@needs_triton
@pytest.mark.parametrize("swap_ab", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, 16, 33, 64])
def test_split_k_decode_path(dtype, m, swap_ab):
    """Small M: one row tile covers all rows and K is split; fp32 partials are summed."""
    k = 200
    x, w_i, w_t, b_i, b_t = make((m,), 41, k, dtype)
    cfg = KernelConfig(max(16, 1 << (m - 1).bit_length()), 32, 32, split_k=3, group_m=1, num_stages=1, swap_ab=swap_ab)
    for lam, path in (
        (torch.rand(m, device=DEVICE), 3),
        (torch.full((m,), 0.6, device=DEVICE), 2),
        (torch.zeros(m, device=DEVICE), 0),
        (torch.ones(m, device=DEVICE), 1),
    ):
        if m == 1 and path == 3:
            path = 2  # one row is always uniform
        paths = torch.empty(0, dtype=torch.int32, device=DEVICE)
        out = run_kernel(x, w_i, w_t, lam, b_i, b_t, 1, config=cfg, record_path=paths)
        assert rel_err(out, interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= TOL[dtype]
        assert paths.numel() == 2 * 3 and paths.tolist() == [path] * 6  # 2 column tiles x 3 K-splits


def test_configs_are_cached_per_m_bucket():
    """A decode loop with a growing M reuses one config per bucket: nothing is tuned per call."""
    device = torch.device(DEVICE)
    cfgs = {m: pick_config(m, 96, 128, torch.bfloat16, device) for m in range(1, 70)}
    assert cfgs[5] is cfgs[16] and cfgs[17] is cfgs[64] and cfgs[65] is not cfgs[64]
    assert [m_bucket(m) for m in (1, 2, 4, 5, 64, 65, 5000)] == [1, 4, 4, 16, 64, 256, 4096]
    for m in (1, 16, 64):
        assert cfgs[m].block_m >= m  # decode: one row tile holds every row


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 5),
    t=st.integers(1, 12),
    n=st.integers(1, 70),
    k=st.integers(1, 90),
    form=st.sampled_from(["scalar", "per_row", "per_seq", "zeros", "ones"]),
    lam_scale=st.floats(-1.0, 2.0),
    bias=st.booleans(),
)
def test_property_shapes_and_lambda(b, t, n, k, form, lam_scale, bias):
    backend = "triton" if triton_available() else "torch"
    x, w_i, w_t, b_i, b_t = make((b, t), n, k, torch.float32, bias=bias)
    lam = {
        "scalar": lam_scale,
        "per_row": torch.rand(b, t) * lam_scale,
        "per_seq": torch.rand(b) * lam_scale,
        "zeros": torch.zeros(b),
        "ones": torch.ones(b, t),
    }[form]
    check(x, w_i, w_t, lam, b_i, b_t, backend)


# --- torch.library op, torch.compile, dispatch ----------------------------------------------------


@needs_triton
def test_custom_op_opcheck():
    from dami_kernels.ops.interp_linear.custom_op import interp_linear_rows_op

    x, w_i, w_t, b_i, b_t = make((9,), 20, 36, torch.float32)
    lam = torch.rand(9, device=DEVICE)
    torch.library.opcheck(interp_linear_rows_op, (x, w_i, w_t, lam, b_i, b_t, 1, 1))
    torch.library.opcheck(interp_linear_rows_op, (x, w_i, w_t, lam, None, None, 9, 1))
    torch.library.opcheck(interp_linear_rows_op, (x, w_i, w_t, lam[:3], b_i, b_t, 3, 3))


@needs_triton
def test_torch_compile_traces_the_op_without_graph_breaks():
    x, w_i, w_t, b_i, b_t = make((2, 5), 24, 40, torch.float32)

    def f(x, lam):
        return dk.interp_linear(x, w_i, w_t, lam, b_i, b_t, backend="triton", check_finite=False)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    lam = torch.rand(2, device=DEVICE)
    ref = interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)
    assert rel_err(compiled(x, lam), ref) <= TOL[torch.float32]
    lam.copy_(torch.rand(2, device=DEVICE))  # λ updated in place: the compiled graph reads the new values
    assert rel_err(compiled(x, lam), interp_linear_fp64(x, w_i, w_t, lam, b_i, b_t)) <= TOL[torch.float32]


def test_backend_choice_is_explicit(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setenv("DAMI_BACKEND", "torch")
    assert resolve_backend(None, cpu) == "torch"
    monkeypatch.setenv("DAMI_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="DAMI_BACKEND"):
        resolve_backend(None, cpu)
    monkeypatch.delenv("DAMI_BACKEND")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda-magic", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_backend("triton", cpu)


def test_import_without_triton_uses_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, dami_kernels as dk\n"
        "from dami_kernels.ops import triton_available, resolve_backend\n"
        "assert not triton_available()\n"
        "assert resolve_backend(None, torch.device('cpu')) == 'torch'\n"
        "y = dk.interp_linear(torch.randn(3, 8), torch.randn(5, 8), torch.randn(5, 8), 0.5)\n"
        "assert y.shape == (3, 5)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(x=torch.randn(4, 9)), "x has K=9"),
        (lambda a: a.update(w_t=torch.randn(6, 8)), "w_t has shape"),
        (lambda a: a.update(w_i=torch.randn(5, 8, 1)), "w_i must be 2-D"),
        (lambda a: a.update(lam=torch.rand(3)), "lam has shape"),
        (lambda a: a.update(lam=float("nan")), "lam must be finite"),
        (lambda a: a.update(lam=float("inf")), "lam must be finite"),
        (lambda a: a.update(lam=torch.tensor([0.1, float("nan"), 0.2, 0.3])), "lam must be finite"),
        (lambda a: a.update(lam="0.5"), "lam must be a float"),
        (lambda a: a.update(lam=torch.tensor([1, 0, 1, 0])), "floating-point"),
        (lambda a: a.update(w_t=torch.randn(5, 8, dtype=torch.float64)), "w_t has dtype"),
        (lambda a: a.update(x=torch.randn(4, 8).half()), "w_i has dtype"),
        (lambda a: a.update(x=torch.randint(0, 3, (4, 8))), "x has dtype"),
        (lambda a: a.update(bias_i=torch.randn(5)), "bias_i and bias_t"),
        (lambda a: a.update(bias_i=torch.randn(4), bias_t=torch.randn(4)), "bias_i must have shape"),
        (lambda a: a.update(bias_i=torch.randn(5), bias_t=torch.randn(5).half()), "bias_t has dtype"),
        (lambda a: a.update(w_i=torch.randn(5, 8, device="meta")), "w_i is on meta"),
        (lambda a: a.update(x=[[1.0]]), "x must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(mutate, match):
    args = dict(
        x=torch.randn(4, 8), w_i=torch.randn(5, 8), w_t=torch.randn(5, 8), lam=torch.rand(4), bias_i=None, bias_t=None
    )
    mutate(args)
    with pytest.raises(ValueError, match=match):
        dk.interp_linear(
            args["x"], args["w_i"], args["w_t"], args["lam"], args["bias_i"], args["bias_t"], backend="torch"
        )


def test_tuned_table_overrides_heuristics(tmp_path, monkeypatch):
    """A table written by scripts/tune_kernels.py is what the launcher uses (no run-time tuning)."""
    import json

    from dami_kernels.ops.common import configs
    from dami_kernels.ops.common.configs import config_to_json, table_key

    tuned = KernelConfig(16, 32, 64, split_k=2, group_m=1, num_warps=4, num_stages=2, swap_ab=True)
    path = tmp_path / "table.json"
    path.write_text(
        json.dumps({"device": "test", "configs": {table_key(48, 96, 16, torch.float32): config_to_json(tuned)}})
    )
    monkeypatch.setenv("DAMI_TUNED_TABLE", str(path))
    for fn in (configs._tuned_table, configs._cached_config):
        fn.cache_clear()
    try:
        device = torch.device(DEVICE)
        assert pick_config(9, 48, 96, torch.float32, device) == tuned
        assert pick_config(9, 48, 97, torch.float32, device) != tuned  # no entry: heuristics
        x, w_i, w_t, b_i, b_t = make((9,), 48, 96, torch.float32)
        check(x, w_i, w_t, torch.rand(9), b_i, b_t, "triton" if triton_available() else "torch")
        monkeypatch.setenv("DAMI_TUNED_TABLE", str(tmp_path / "missing.json"))
        configs._tuned_table.cache_clear()
        configs._cached_config.cache_clear()
        with pytest.raises(ValueError, match="DAMI_TUNED_TABLE"):
            pick_config(9, 48, 96, torch.float32, device)
    finally:
        monkeypatch.delenv("DAMI_TUNED_TABLE")
        configs._tuned_table.cache_clear()
        configs._cached_config.cache_clear()
