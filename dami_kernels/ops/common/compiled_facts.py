"""Facts about a compiled kernel, read from its artefacts' text (PTX, TTGIR, `cuobjdump -res-usage` output).

Pure functions of text: no Triton import, no compiling (scripts/offline_compile compiles and calls them).
Counts are static: instructions in the PTX, not executions.

- `scalar_global_16bit`: the PTX's scalar 16-bit global loads and stores (`ld.global.b16`,
  `st.global.nc.u16`, ...); vector accesses (`.v2`, `.v4`), wider types and `cp.async` are not counted.
- `wgmma_max_pending`: the largest N of `wgmma.wait_group N` (-1 without `wgmma.mma_async`): 0 means
  every wgmma is waited for before the next is issued, i.e. the MMAs are not pipelined.
- `loads_of_param`: how the global loads whose pointer derives from one kernel argument are made, from
  the final TTGIR (the PTX has lost the names). A forward data-flow walk from the argument's SSA value
  (`tt.func` signature, matched by its `loc("name")`) through every op's operands to its results (not
  through a load: an index loaded from memory does not make its pointer "x's"), through `scf.for`
  iter_args and `scf.yield` into loop-carried values and region results, with SSA names scoped per region
  (sibling regions reuse names); a load whose pointer (first operand) is reached is `async`
  (`ttg.async_copy_global_to_local`: cp.async; `ttng.async_tma_copy_global_to_local` /
  `ttng.async_tma_gather`: TMA) or `sync` (`tt.load`, `tt.descriptor_load`). `x_via_cp_async`: the x
  operand has async loads and no sync one.

`codegen_problems` holds the rules `--strict-codegen` applies to a report row.
"""

from __future__ import annotations

import re

from dami_kernels.ops.common.configs import DECODE_MAX_M

# DECODE_MAX_M (64): an op call with at most this many rows is a decode (the launcher's own bound).
PREFILL_MIN_M = 512  # an op call with at least this many rows is a prefill (its wgmma must be pipelined)

_TF32_MMA = re.compile(r"^\s*(?:wgmma|mma)\S*\.tf32", re.M)
_GLOBAL_ACCESS = re.compile(r"(?<![\w.])(?:ld|st)\.global((?:\.[\w:]+)+)")
_TYPES_16 = {"b16", "u16", "s16", "f16", "bf16"}
_WAIT_GROUP = re.compile(r"\bwgmma\.wait_group(?:\.\w+)*\s+(\d+)")
_SSA = re.compile(r"%[\w.$-]+(?:#\d+)?")
_DEF = re.compile(r"^\s*((?:%[\w.$-]+(?::\d+)?\s*,\s*)*%[\w.$-]+(?::\d+)?)\s*=\s*(.*)$")
_OP = re.compile(r'^"?([a-z_]+\.[\w.]+)"?')
_ITER_ARGS = re.compile(r"iter_args\((.*?)\)\s*->")
_PARAM = re.compile(r'(%[\w.$-]+):[^%]*?loc\("([\w$]+)"')
SYNC_LOADS = ("tt.load", "tt.descriptor_load")
ASYNC_LOADS = ("ttg.async_copy_global_to_local", "ttng.async_tma_copy_global_to_local", "ttng.async_tma_gather")


# --- PTX ---------------------------------------------------------------------------------------------


def mma_kind(ptx: str) -> str:
    """The tensor-core instructions the PTX issues: "wgmma", "mma.sync" or "none"."""
    if re.search(r"^\s*wgmma\.mma_async", ptx, re.M):
        return "wgmma"
    return "mma.sync" if re.search(r"^\s*mma\.sync", ptx, re.M) else "none"


def tf32_instructions(ptx: str) -> int:
    """The number of TF32 MMA instructions (wgmma or mma.sync)."""
    return len(_TF32_MMA.findall(ptx))


def uses_cp_async(ptx: str) -> bool:
    """Whether some load is pipelined through `cp.async` (TMA: `cp.async.bulk`)."""
    return "cp.async" in ptx


def scalar_global_16bit(ptx: str) -> int:
    """Scalar 16-bit global loads plus stores (`ld.global[.mods].b16|u16|s16|f16|bf16`, `st.global...`)."""
    count = 0
    for mods in _GLOBAL_ACCESS.findall(ptx):
        parts = mods.split(".")[1:]
        if parts[-1] in _TYPES_16 and not any(re.fullmatch(r"v\d+", p) for p in parts):
            count += 1
    return count


def wgmma_max_pending(ptx: str) -> int:
    """The largest N of `wgmma.wait_group N`; -1 when the PTX has no wgmma."""
    if not re.search(r"\bwgmma\.mma_async", ptx):
        return -1
    return max((int(n) for n in _WAIT_GROUP.findall(ptx)), default=0)


def resource_usage(res_usage: str) -> dict[str, int]:
    """REG/STACK/LOCAL/SHARED of the kernel from the text `cuobjdump -res-usage` prints."""
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", res_usage)}
    if "REG" not in usage:
        raise RuntimeError(f"cuobjdump -res-usage gave no register count:\n{res_usage}")
    return usage


# --- TTGIR -------------------------------------------------------------------------------------------


def func_params(ttgir: str) -> dict[str, str]:
    """{Python parameter name: SSA name} of the kernel's `tt.func` arguments."""
    line = next((s for s in ttgir.splitlines() if s.lstrip().startswith("tt.func")), "")
    return {name: ssa for ssa, name in _PARAM.findall(line)}


def _names(defs: str) -> list[str]:
    """The SSA values a definition `%a, %b:3 = ...` names (`%b#0`, `%b#1`, `%b#2` for a multi-result)."""
    out: list[str] = []
    for d in re.split(r"\s*,\s*", defs.strip()):
        name, _, n = d.partition(":")
        out += [f"{name}#{i}" for i in range(int(n))] if n else [name]
    return out


class _Scopes:
    """SSA names per region: sibling regions may reuse a name, so each definition gets a unique id."""

    def __init__(self):
        self.stack: list[dict[str, str]] = [{}]
        self.count = 0

    def define(self, name: str) -> str:
        self.count += 1
        self.stack[-1][name] = uid = f"{name}@{self.count}"
        return uid

    def use(self, name: str) -> str:
        base = name.split("#")[0]
        for scope in reversed(self.stack):
            if name in scope:
                return scope[name]
            if base in scope:  # a use of one result of a multi-result op
                return scope[base] + name[len(base) :]
        return name  # not defined in this text (never reached from a kernel argument)


def _data_flow(ttgir: str) -> tuple[dict[str, set[str]], list[tuple[str, str]], dict[str, str]]:
    """(edges value -> values computed from it, [(load op, pointer operand)], {parameter: value id})."""
    edges: dict[str, set[str]] = {}
    loads: list[tuple[str, str]] = []
    frames: list[tuple[list[str], list[str]]] = []  # open regions: (op results, loop-carried block args)
    scopes = _Scopes()
    params: dict[str, str] = {}

    def flow(src: str, dst: str) -> None:
        edges.setdefault(src, set()).add(dst)

    for raw in ttgir.splitlines():
        line = raw.strip()
        if line.endswith(")") and " loc(" in line:  # an op's trailing location
            line = line[: line.rindex(" loc(")]
        if line.startswith("}"):  # a region closes ("} else {" opens the same op's next region)
            frame = frames.pop() if frames else ([], [])
            scopes.stack.pop()
            if line.endswith("{"):
                frames.append(frame)
                scopes.stack.append({})
            continue
        if line.startswith("tt.func"):
            params = {name: scopes.define(ssa) for ssa, name in _PARAM.findall(line)}
        if line.startswith("^"):  # a block's arguments
            for arg in re.findall(r"(%[\w.$-]+)\s*:", line):
                scopes.define(arg)
            continue
        m = _DEF.match(line)
        defs, body = (_names(m.group(1)), m.group(2)) if m else ([], line)
        op = _OP.match(body)
        name = op.group(1) if op else ""
        iter_args = _ITER_ARGS.search(body) if name == "scf.for" else None
        pairs = re.findall(r"(%[\w.$-]+)\s*=\s*(%[\w.$#-]+)", iter_args.group(1)) if iter_args else []
        inits = [scopes.use(init) for _, init in pairs]
        operands = [scopes.use(v) for v in _SSA.findall(body)] if name not in ("scf.for", "scf.if") else []
        results = [scopes.define(d) for d in defs]
        if name == "scf.yield" and frames:
            res, args = frames[-1]  # the i-th yielded value: the op's i-th result (and loop-carried value)
            for i, v in enumerate(operands):
                for dst in res[i : i + 1] + args[i : i + 1]:
                    flow(v, dst)
        elif name in SYNC_LOADS + ASYNC_LOADS:  # loaded data is not address arithmetic: no flow
            if operands:
                loads.append((name, operands[0]))
        else:
            for v in operands:
                for r in results:
                    flow(v, r)
        if line.endswith("{"):
            scopes.stack.append({})
            iv = re.match(r"scf\.for\s+(%[\w.$-]+)", body)
            if iv:  # the body's block arguments: the induction variable and the iter_args
                scopes.define(iv.group(1))
            carried = [scopes.define(arg) for arg, _ in pairs]
            for arg, init, result in zip(carried, inits, results, strict=False):
                flow(init, arg)
                flow(arg, result)
            frames.append((results, carried))
    return edges, loads, params


def loads_of_param(ttgir: str, param: str) -> dict[str, int]:
    """{"sync": n, "async": n}: the global loads whose pointer derives from kernel argument `param`."""
    counts = {"sync": 0, "async": 0}
    edges, loads, params = _data_flow(ttgir)
    start = params.get(param)
    if start is None:
        return counts
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    for op, ptr in loads:
        if ptr in seen:
            counts["async" if op in ASYNC_LOADS else "sync"] += 1
    return counts


def x_via_cp_async(ttgir: str, param: str = "x_ptr") -> bool:
    """Whether every global load of the operand `param` is asynchronous (cp.async or TMA), and there is one."""
    loads = loads_of_param(ttgir, param)
    return loads["async"] > 0 and loads["sync"] == 0


# --- the facts of one kernel and the --strict-codegen rules --------------------------------------------


def codegen_facts(ptx: str, ttgir: str, x_param: str = "x_ptr") -> dict:
    """The row fields read from one compiled kernel's PTX and TTGIR."""
    return {
        "tf32_instructions": tf32_instructions(ptx),
        "uses_cp_async": uses_cp_async(ptx),
        "mma": mma_kind(ptx),
        "scalar_global_16bit": scalar_global_16bit(ptx),
        "wgmma_max_pending": wgmma_max_pending(ptx),
        "x_via_cp_async": x_via_cp_async(ttgir, x_param),
    }


GATHER_KERNELS = ("moe_route",)  # kernels whose 16-bit accesses are gathers (see codegen_problems)


def codegen_problems(row: dict) -> list[str]:
    """What `--strict-codegen` fails a row for: a scalar 16-bit global access in a bf16/fp16 variant, a
    prefill (m >= PREFILL_MIN_M) whose wgmma is never pipelined, a decode call (m <= DECODE_MAX_M) that
    needs more than one launch. Rows of a failed compile get none (they fail anyway)."""
    if row.get("error"):
        return []
    out = []
    # The MoE routing kernel gathers one routing weight per sorted row: a gather is scalar by nature (P values
    # of 2 bytes per call, no weight or activation traffic), so the 16-bit rule covers the GEMM kernels.
    gemm = row.get("kernel") not in GATHER_KERNELS
    if gemm and row["dtype"] in ("bf16", "fp16") and row["scalar_global_16bit"] > 0:
        out.append(f"scalar 16-bit global accesses: {row['scalar_global_16bit']} in the PTX")
    if row["m"] >= PREFILL_MIN_M and row["mma"] == "wgmma" and row["wgmma_max_pending"] < 1:
        out.append(f"prefill (M >= {PREFILL_MIN_M}) wgmma never pipelined: wgmma.wait_group 0 only")
    if row["m"] <= DECODE_MAX_M and row["launches_per_call"] > 1:
        out.append(f"decode (M <= {DECODE_MAX_M}) call needs {row['launches_per_call']} launches")
    return out
