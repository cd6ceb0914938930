"""The offline compile tools on CPU: scripts/compile_check.py compiles for sm_90 (no GPU needed) exactly the
specializations the launcher produces, and its JSON report keeps its contract. Subprocesses on a small subset:
bf16 for the Qwen3-4B gate/up and lm_head shapes at a split-K decode bucket (M=4) and a multi-stage prefill
bucket (M=256), and the lm_head at M=16384 (whose output offsets need 64 bits); fp32 (slow to compile) for
gate/up at M=256, once by default and once with --tf32; scripts/count_variants.py; and
scripts/compile_check_moe.py (the grouped experts kernel, Qwen3-30B-A3B expert shapes, bf16) at 1 token
(split-K decode) and 4096 tokens, with --strict-codegen; and --strict-codegen on the gate/up shape at a decode
(M=4) and a prefill (M=1024) bucket. The bf16 runs write each variant's PTX (--ptx-dir)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dami_kernels.ops.common import compiled_facts

pytestmark = pytest.mark.slow  # compiles real sm_90 kernels offline

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
SMEM_LIMIT_SM90 = 232448
ROW_KEYS = {
    "shape": list,
    "m_bucket": int,
    "dtype": str,
    "config": dict,
    "registers": int,
    "spill_bytes": int,
    "shared_bytes": int,
    "tf32_instructions": int,
    "int64_offsets": bool,
    "uses_cp_async": bool,
    "launches_per_call": int,
    "scalar_global_16bit": int,
    "wgmma_max_pending": int,
    "x_via_cp_async": bool,
}


FP32 = ("--quiet", "--shapes", "qwen3-4b:gate_up", "--dtypes", "fp32", "--m-buckets", "256", "--sms", "132")
RUNS = {  # name: (script, arguments)
    "check": (
        "compile_check.py",
        (
            "--quiet",
            "--shapes",
            "qwen3-4b:gate_up,qwen3-4b:lm_head",
            "--dtypes",
            "bf16",
            "--m-buckets",
            "4,256",
            "--lm-head-m",
            "16384",
            "--sms",
            "132",
            "--ptx-dir",
            "{tmp}/check_ptx",
        ),
    ),
    "strict": (
        "compile_check.py",
        ("--quiet", "--shapes", "qwen3-4b:gate_up,qwen3-4b:down", "--dtypes", "bf16", "--m-buckets", "4,64,1024")
        + ("--sms", "132", "--lam-forms", "per_row", "--bias", "off", "--strict-codegen"),
    ),
    "fp32": ("compile_check.py", FP32),  # fp32 compiles are slow (FMA products): one bucket, by default and TF32
    "tf32": ("compile_check.py", ("--tf32", *FP32)),
    "count": ("count_variants.py", ()),
    "moe": (
        "compile_check_moe.py",
        ("--quiet", "--dtypes", "bf16", "--moe-tokens", "1,4096", "--sms", "132", "--strict-codegen")
        + ("--ptx-dir", "{tmp}/moe_ptx"),
    ),
}


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory) -> tuple[dict[str, tuple[int, str, object]], Path]:
    """The runs of the scripts, side by side (the machine has more than one core):
    ({name: (exit status, output, parsed JSON report)}, their folder)."""
    tmp = tmp_path_factory.mktemp("compile_check")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it
    procs = {}
    for name, (script, args) in RUNS.items():
        log = open(tmp / f"{name}.log", "w+")
        args = [a.format(tmp=tmp) for a in args]
        cmd = [sys.executable, str(SCRIPTS / script), "--json", str(tmp / f"{name}.json"), *args]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env), log)
    out = {}
    for name, (proc, log) in procs.items():
        rc = proc.wait(timeout=600)
        log.seek(0)
        text = log.read()
        log.close()
        report = tmp / f"{name}.json"
        assert report.exists(), f"{name}: no report written (rc {rc}):\n{text}"
        out[name] = (rc, text, json.loads(report.read_text()))
    return out, tmp


@pytest.fixture(scope="module")
def runs(script_runs) -> dict[str, tuple[int, str, object]]:
    return script_runs[0]


@pytest.fixture(scope="module")
def report(runs):
    """((exit statuses), outputs, rows) of the bf16 and the default fp32 runs."""
    (rc, text, rows), (rc32, text32, rows32) = runs["check"], runs["fp32"]
    return (rc, rc32), text + text32, rows + rows32


def test_report_contract(report):
    rc, text, rows = report
    assert isinstance(rows, list) and rows
    for row in rows:
        for key, typ in ROW_KEYS.items():
            assert type(row[key]) is typ, (key, row)
        assert row["dtype"] in ("bf16", "fp16", "fp32")
        assert row["launches_per_call"] == 1, row  # split-K too: the partials are reduced inside the kernel
        assert row["wgmma_max_pending"] >= 0 if row["mma"] == "wgmma" else row["wgmma_max_pending"] == -1, row
        assert not row["x_via_cp_async"] or row["kernel"] == "interp_linear", row
        # --strict-codegen is off by default: its rules add no problem.
        assert not set(row["problems"]) & set(compiled_facts.codegen_problems(row)), row
        assert len(row["shape"]) == 2 and all(isinstance(v, int) for v in row["shape"])
        assert {"block_m", "block_n", "block_k", "num_warps", "num_stages"} <= set(row["config"])
    # Every (shape, M, dtype) of the subset is reported; split-K reduces inside the kernel (one launch).
    got = {(tuple(r["shape"]), r["m"], r["dtype"], r["kernel"]) for r in rows}
    for shape in ((9728, 2560), (151936, 2560)):
        for m in (4, 256):
            assert (shape, m, "bf16", "interp_linear") in got
    assert not any(kernel == "splitk_reduce" for *_, kernel in got)
    assert any(r["split_k"] > 1 and r["m"] == 4 for r in rows if r["shape"] == [9728, 2560])  # decode splits K
    assert ((151936, 2560), 16384, "bf16", "interp_linear") in got
    assert ((9728, 2560), 256, "fp32", "interp_linear") in got
    assert {r["m_bucket"] for r in rows} == {4, 256, 4096}
    assert all(r["precision"] == "ieee" for r in rows if r["dtype"] == "fp32")
    # The exit status says whether any variant has a problem.
    assert (rc[0] != 0) == any(r["problems"] for r in rows if r["dtype"] == "bf16"), text
    assert (rc[1] != 0) == any(r["problems"] for r in rows if r["dtype"] == "fp32"), text


def _codegen_rules_match_facts(rows) -> None:
    """Each row's problems are the default ones plus exactly the --strict-codegen rules its facts break."""
    for r in rows:
        rules = compiled_facts.codegen_problems(r)
        assert r["problems"][len(r["problems"]) - len(rules) :] == rules, r
        scalar = r["dtype"] in ("bf16", "fp16") and r["scalar_global_16bit"] > 0
        scalar = scalar and r["kernel"] not in compiled_facts.GATHER_KERNELS
        flat = r["m"] >= compiled_facts.PREFILL_MIN_M and r["mma"] == "wgmma" and r["wgmma_max_pending"] == 0
        split = r["m"] <= compiled_facts.DECODE_MAX_M and r["launches_per_call"] > 1
        said = " ".join(r["problems"])
        assert ("scalar 16-bit" in said, "never pipelined" in said, "launches" in said) == (scalar, flat, split), r


def test_strict_codegen(runs):
    """Qwen3's variants (no linear bias) pass every codegen rule: vector 16-bit traffic with x through cp.async,
    pipelined wgmma in prefill, one launch per decode call even where K is split."""
    rc, text, rows = runs["strict"]
    assert {(r["kernel"], r["m"]) for r in rows} >= {("interp_linear", m) for m in (4, 64, 1024)}, rows
    _codegen_rules_match_facts(rows)
    assert (rc != 0) == any(r["problems"] for r in rows), text
    assert rc == 0 and not any(r["problems"] for r in rows), text
    assert any(r["split_k"] > 1 for r in rows)  # the decode down_proj splits K, in one launch
    for r in rows:
        assert r["scalar_global_16bit"] == 0 and r["x_via_cp_async"], r
        if r["m"] <= compiled_facts.DECODE_MAX_M:
            assert r["launches_per_call"] == 1, r
        if r["m"] >= compiled_facts.PREFILL_MIN_M:
            assert r["wgmma_max_pending"] >= 1, r


def test_ptx_dir(script_runs):
    runs, tmp = script_runs
    for name, folder in (("check", "check_ptx"), ("moe", "moe_ptx")):
        rows = runs[name][2]
        written = {p.stem: p for p in (tmp / folder).glob("*.ptx")}
        assert set(written) == {r["variant"] for r in rows}, name
        for r in rows:  # the PTX written is the one the row's facts come from
            ptx = written[r["variant"]].read_text()
            assert compiled_facts.scalar_global_16bit(ptx) == r["scalar_global_16bit"], r
            assert compiled_facts.wgmma_max_pending(ptx) == r["wgmma_max_pending"], r
            assert compiled_facts.mma_kind(ptx) == r["mma"], r


def test_int64_exactly_for_the_long_lm_head(report):
    _, _, rows = report
    for row in rows:
        assert row["int64_offsets"] == (row["shape"] == [151936, 2560] and row["m"] == 16384), row


def test_no_spills_no_smem_overflow_no_default_tf32(report):
    _, _, rows = report
    bad = [
        (r["kernel"], r["dtype"], r["config"], r["split_k"], r["has_bias"], r["problems"])
        for r in rows
        if r["spill_bytes"] != 0 or r["shared_bytes"] > SMEM_LIMIT_SM90 or r.get("error")
    ]
    assert not bad, bad
    assert all(r["tf32_instructions"] == 0 for r in rows if r["dtype"] == "fp32")


def test_multi_stage_configs_are_pipelined(report):
    _, _, rows = report
    staged = [r for r in rows if r["kernel"] == "interp_linear" and r["config"]["num_stages"] > 1]
    assert staged
    flat = [(r["dtype"], r["config"], r["shape"], r["m"]) for r in staged if not r["uses_cp_async"]]
    assert not flat, f"multi-stage configs without cp.async: {flat}"


def test_tf32_flag_is_seen(runs):
    _, _, rows = runs["tf32"]
    assert rows and all(r["precision"] == "tf32" for r in rows)
    assert all(r["tf32_instructions"] > 0 for r in rows), [(r["config"], r["mma"]) for r in rows]


def test_count_variants_is_small(runs):
    rc, text, result = runs["count"]
    assert rc == 0, text
    assert result["decode"]["m"] == [1, 64] and result["prefill"]["m"] == [1, 8192]
    for loop in ("decode", "prefill"):
        counts = result[loop]["distinct_keys_per_bias"]
        assert 0 < counts["false"] <= 8 and 0 < counts["true"] <= 8, result[loop]
        assert 0 < result[loop]["distinct_keys"] <= 16


def test_moe_grouped_kernel_rows(runs):
    rc, text, rows = runs["moe"]
    assert rows, text
    for row in rows:
        for key, typ in ROW_KEYS.items():
            assert type(row[key]) is typ, (key, row)
        assert row["launches_per_call"] == 1, row  # split-K too: the partials are reduced inside the kernel
        assert row["experts"] == 128 and row["top_k"] == 8 and row["rows"] == 8 * row["m"], row
    grouped = {(tuple(r["shape"]), r["m"]): r for r in rows if r["kernel"] == "interp_grouped"}
    # gate_up [E, 1536, 2048] and down [E, 2048, 768] at both token counts, both λ forms.
    assert set(grouped) == {(s, t) for s in ((1536, 2048), (2048, 768)) for t in (1, 4096)}, sorted(grouped)
    for (_, tokens), r in grouped.items():
        assert set(r["lam_forms"]) == {"per_row", "per_sequence"}, r
        assert r["m_bucket"] == (1 if tokens == 1 else 256)
        assert r["mma"] in ("wgmma", "mma.sync"), r
        assert r["specialization"]["P"] == "i32" and r["specialization"]["NUM_TILES"] == "i32", r
    # One token routes 8 rows: the decode config splits K, reduced inside the grouped kernel (no reduce
    # kernel); the routing kernel and the k-slot combine make the other two launches.
    assert any(r["split_k"] > 1 for r in grouped.values() if r["m"] == 1), grouped
    assert not any(r["kernel"] == "splitk_reduce" for r in rows), rows
    assert {r["kernel"] for r in rows} == {"interp_grouped", "moe_route", "moe_combine"}, rows
    assert not [r for r in rows if r["spill_bytes"] != 0 or r["shared_bytes"] > SMEM_LIMIT_SM90 or r.get("error")]
    assert all(r["uses_cp_async"] for r in grouped.values() if r["config"]["num_stages"] > 1)
    _codegen_rules_match_facts(rows)  # the run is --strict-codegen
    assert (rc != 0) == any(r["problems"] for r in rows), text
