"""dami_kernels.ops.common.compiled_facts on hand-written PTX and TTGIR snippets (shaped like Triton 3.6's output
for sm_90): what counts as a scalar 16-bit global access, the wgmma pipelining depth, which loads are x's and
the --strict-codegen rules."""

import pytest

from dami_kernels.ops.common import compiled_facts as cf

PTX_ACCESSES = """
	@%p1 ld.global.b16 { %rs1 }, [ %rd1 + 0 ];
	@%p2 ld.global.nc.L1::evict_last.u16 { %rs2 }, [ %rd2 + 0 ];
	ld.global.s16 %rs3, [%rd3];
	ld.global.ca.f16 %h1, [%rd4];
	@%p3 st.global.b16 [ %rd5 + 0 ], { %rs4 };
	st.global.wb.bf16 [%rd6], %rs5;
	@%p4 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd7 + 0 ];
	ld.global.v2.b16 { %rs6, %rs7 }, [%rd8];
	@%p5 st.global.v2.b16 [ %rd9 + 0 ], { %rs8, %rs9 };
	ld.global.b32 %r5, [%rd10];
	st.global.b32 [%rd11], %r6;
	ld.shared.b16 %rs10, [%r7];
	ld.param.u16 %rs11, [param_0];
	cp.async.cg.shared.global [ %r8 + 0 ], [ %rd12 + 0 ], 0x10, %r9;
	cp.async.commit_group;
	atom.global.add.f16 %rs12, [%rd13], %rs13;
"""
PTX_WGMMA = """
	wgmma.fence.sync.aligned;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, p, 1, 1, 0, 1;
	wgmma.commit_group.sync.aligned;
	wgmma.wait_group.sync.aligned 1;
	wgmma.wait_group.sync.aligned 0;
"""
PTX_MMA_SYNC = "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2, %f3, %f4}, {%r1}, {%r2}, {%f5};\n"
PTX_TF32 = "\twgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {%f1}, %rd1, %rd2, p, 1, 1;\n"

# x and W: pointers from the arguments, W through cp.async (prologue and loop), x through a plain tt.load.
FUNC = (
    '  tt.func public @k(%x_ptr: !tt.ptr<bf16> {tt.divisibility = 16 : i32} loc("x_ptr"(#loc)), '
    '%w_ptr: !tt.ptr<bf16> {tt.divisibility = 16 : i32} loc("w_ptr"(#loc)), '
    '%tiles_ptr: !tt.ptr<i32> loc("tiles_ptr"(#loc)), %K: i32 loc("K"(#loc))) attributes {noinline = false} {\n'
)
TTGIR_X_SYNC = (
    FUNC
    + """    %xp = tt.splat %x_ptr : !tt.ptr<bf16> -> tensor<64x32x!tt.ptr<bf16>, #blocked> loc(#loc1)
    %xp_1 = tt.addptr %xp, %offs : tensor<64x32x!tt.ptr<bf16>, #blocked>, tensor<64x32xi32, #blocked> loc(#loc2)
    %wp = tt.splat %w_ptr : !tt.ptr<bf16> -> tensor<32x128x!tt.ptr<bf16>, #blocked1> loc(#loc3)
    %tile = ttg.async_copy_global_to_local %wp, %buf mask %m : tensor<32x128x!tt.ptr<bf16>> loc(#l)
    %acc:3 = scf.for %i = %c0_i32 to %K step %c32_i32 iter_args(%x_it = %xp_1, %arg1 = %cst, %w_it = %wp) -> (\
tensor<64x32x!tt.ptr<bf16>>, tensor<64x128xf32, #mma>, tensor<32x128x!tt.ptr<bf16>>)  : i32 {
      %a = tt.load %x_it, %mask, %cst_0 : tensor<64x32x!tt.ptr<bf16>, #blocked> loc(#loc5)
      %t = ttg.async_copy_global_to_local %w_it, %buf mask %m : tensor<32x128x!tt.ptr<bf16>> loc(#l)
      %d = ttng.warp_group_dot %sa, %sb, %arg1 {isAsync = true} : !ttg.memdesc<64x32xbf16> loc(#l)
      %x_next = tt.addptr %x_it, %cst_1 : tensor<64x32x!tt.ptr<bf16>>, tensor<64x32xi32> loc(#loc2)
      %w_next = tt.addptr %w_it, %cst_2 : tensor<32x128x!tt.ptr<bf16>>, tensor<32x128xi32> loc(#loc3)
      scf.yield %x_next, %d, %w_next : tensor<64x32x!tt.ptr<bf16>>, tensor<64x128xf32>, tensor<32x128x!tt.ptr<bf16>>
    } loc(#loc8)
    tt.return loc(#loc9)
  } loc(#loc)
"""
)
TTGIR_X_ASYNC = TTGIR_X_SYNC.replace(
    "%a = tt.load %x_it, %mask, %cst_0 :",
    "%a = ttg.async_copy_global_to_local %x_it, %buf2 mask %m2 :",
)
# Sibling regions reuse a name (%p: x's pointer in one branch, W's in the other); a region result carries x's
# pointer; W's row comes from an index loaded through tiles_ptr (loaded data is not address arithmetic).
TTGIR_REGIONS = (
    FUNC
    + """    %r = scf.if %c -> (tensor<16xf32, #blocked>) {
      %p = tt.splat %x_ptr : !tt.ptr<bf16> -> tensor<16x!tt.ptr<bf16>, #blocked> loc(#loc1)
      %v = tt.load %p : tensor<16x!tt.ptr<bf16>, #blocked> loc(#loc2)
      scf.yield %v : tensor<16xbf16, #blocked> loc(#loc3)
    } else {
      %p = tt.splat %w_ptr : !tt.ptr<bf16> -> tensor<16x!tt.ptr<bf16>, #blocked> loc(#loc4)
      %v = ttg.async_copy_global_to_local %p, %buf : tensor<16x!tt.ptr<bf16>, #blocked> -> <16xbf16> loc(#loc5)
      scf.yield %v : tensor<16xbf16, #blocked> loc(#loc3)
    } loc(#loc6)
    %q = scf.if %c2 -> (tensor<16x!tt.ptr<bf16>, #blocked>) {
      %q0 = tt.splat %x_ptr : !tt.ptr<bf16> -> tensor<16x!tt.ptr<bf16>, #blocked> loc(#loc1)
      scf.yield %q0 : tensor<16x!tt.ptr<bf16>, #blocked> loc(#loc3)
    } else {
      scf.yield %other : tensor<16x!tt.ptr<bf16>, #blocked> loc(#loc3)
    } loc(#loc6)
    %xq = tt.load %q : tensor<16x!tt.ptr<bf16>, #blocked> loc(#loc2)
    %idx = tt.load %tiles_ptr : !tt.ptr<i32> loc(#loc7)
    %wrow = tt.addptr %w_ptr, %idx : !tt.ptr<bf16>, i32 loc(#loc8)
    %wv = tt.load %wrow : !tt.ptr<bf16> loc(#loc9)
    tt.return loc(#loc10)
  } loc(#loc)
"""
)


def test_scalar_16bit_global_accesses_are_counted():
    # b16/u16/s16/f16 loads and b16/bf16 stores; not vectors (.v2/.v4), 32-bit, shared, param, cp.async, atom.
    assert cf.scalar_global_16bit(PTX_ACCESSES) == 6
    assert cf.scalar_global_16bit(PTX_WGMMA) == 0
    assert cf.uses_cp_async(PTX_ACCESSES) and not cf.uses_cp_async(PTX_WGMMA)


def test_wgmma_pending_depth_and_mma_kind():
    assert cf.wgmma_max_pending(PTX_WGMMA) == 1
    assert cf.wgmma_max_pending(PTX_WGMMA.replace("aligned 1;", "aligned 0;")) == 0
    assert cf.wgmma_max_pending(PTX_MMA_SYNC) == -1 and cf.wgmma_max_pending(PTX_ACCESSES) == -1
    assert (cf.mma_kind(PTX_WGMMA), cf.mma_kind(PTX_MMA_SYNC), cf.mma_kind(PTX_ACCESSES)) == (
        "wgmma",
        "mma.sync",
        "none",
    )
    assert cf.tf32_instructions(PTX_TF32) == 1 and cf.tf32_instructions(PTX_WGMMA + PTX_MMA_SYNC) == 0


def test_resource_usage():
    text = "Function interp_linear_kernel:\nREG:168 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:676 TEXTURE:0"
    assert cf.resource_usage(text) == {"REG": 168, "STACK": 0, "SHARED": 0, "LOCAL": 0}
    with pytest.raises(RuntimeError, match="no register count"):
        cf.resource_usage("nothing")


def test_params_by_their_python_names():
    assert cf.func_params(TTGIR_X_SYNC) == {"x_ptr": "%x_ptr", "w_ptr": "%w_ptr", "tiles_ptr": "%tiles_ptr", "K": "%K"}
    renamed = TTGIR_X_SYNC.replace("%x_ptr", "%arg0")  # SSA names need not be the parameters' names
    assert cf.func_params(renamed)["x_ptr"] == "%arg0"
    assert cf.loads_of_param(renamed, "x_ptr") == {"sync": 1, "async": 0}


def test_x_loads_told_from_w_loads():
    assert cf.loads_of_param(TTGIR_X_SYNC, "x_ptr") == {"sync": 1, "async": 0}
    assert cf.loads_of_param(TTGIR_X_SYNC, "w_ptr") == {"sync": 0, "async": 2}  # prologue + loop-carried
    assert not cf.x_via_cp_async(TTGIR_X_SYNC)
    assert cf.loads_of_param(TTGIR_X_ASYNC, "x_ptr") == {"sync": 0, "async": 1}
    assert cf.x_via_cp_async(TTGIR_X_ASYNC)
    assert cf.loads_of_param(TTGIR_X_SYNC, "nope") == {"sync": 0, "async": 0}
    assert not cf.x_via_cp_async(TTGIR_X_SYNC, "nope") and not cf.x_via_cp_async("")


def test_regions_reused_names_and_loaded_indices():
    # x: the then-branch load and the load through the scf.if result; not the else-branch's %p (W's).
    assert cf.loads_of_param(TTGIR_REGIONS, "x_ptr") == {"sync": 2, "async": 0}
    assert cf.loads_of_param(TTGIR_REGIONS, "w_ptr") == {"sync": 1, "async": 1}
    assert cf.loads_of_param(TTGIR_REGIONS, "tiles_ptr") == {"sync": 1, "async": 0}


def test_codegen_facts_fields():
    facts = cf.codegen_facts(PTX_WGMMA + PTX_ACCESSES, TTGIR_X_ASYNC)
    assert facts == {
        "tf32_instructions": 0,
        "uses_cp_async": True,
        "mma": "wgmma",
        "scalar_global_16bit": 6,
        "wgmma_max_pending": 1,
        "x_via_cp_async": True,
    }


def _row(**kw):
    row = {"dtype": "bf16", "m": 256, "mma": "wgmma", "scalar_global_16bit": 0, "wgmma_max_pending": 1}
    return {**row, "launches_per_call": 1, **kw}


def test_strict_codegen_rules():
    assert cf.codegen_problems(_row()) == []
    assert cf.codegen_problems(_row(scalar_global_16bit=3)) == ["scalar 16-bit global accesses: 3 in the PTX"]
    assert cf.codegen_problems(_row(dtype="fp16", scalar_global_16bit=3))
    assert cf.codegen_problems(_row(dtype="fp32", scalar_global_16bit=3)) == []
    # Prefill: from PREFILL_MIN_M rows, a wgmma that is never pipelined; mma.sync (no wgmma) is not checked.
    assert cf.codegen_problems(_row(m=cf.PREFILL_MIN_M - 1, wgmma_max_pending=0)) == []
    (problem,) = cf.codegen_problems(_row(m=cf.PREFILL_MIN_M, wgmma_max_pending=0))
    assert "never pipelined" in problem
    assert cf.codegen_problems(_row(m=4096, mma="mma.sync", wgmma_max_pending=-1)) == []
    # Decode: up to DECODE_MAX_M (the launcher's own bound) rows, one launch per call.
    assert cf.DECODE_MAX_M == 64
    (problem,) = cf.codegen_problems(_row(m=cf.DECODE_MAX_M, launches_per_call=2))
    assert "needs 2 launches" in problem
    assert cf.codegen_problems(_row(m=cf.DECODE_MAX_M + 1, launches_per_call=2)) == []
    assert cf.codegen_problems(_row(error="boom", scalar_global_16bit=-1, launches_per_call=2, m=1)) == []
