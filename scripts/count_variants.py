"""Count the distinct compiled variants (Triton cache keys) the dense launcher needs for a decode loop and a
prefill loop on one linear, compiling nothing.

The launcher runs for a decode loop (M = 1..64, per-sequence λ, one row per sequence) and a prefill loop (one
sequence of M = 1..8192 rows, --prefill-max-m) on CPU stand-ins of the --count-shape linear's inputs, its
launches recorded (scripts/offline_compile/harness.py), with the first config source (the GPU heuristics for
the first SM count in --sms, or the table $DAMI_TUNED_TABLE names). The distinct Triton cache keys are counted
per kernel, with and without bias: the key of `JITFunction.run`, which Triton's cache hook receives on a cache
miss, skipping the compilation; a placeholder is then cached under it, so a later launch with the same key is
a cache hit that returns it (scripts/offline_compile/triton_shim.py).

--json OUT writes {"shape", "linears", "dtype", "config_source", "elapsed_s", and per loop ("decode",
"prefill"): {"m": [1, max M], "lam_form", "distinct_keys", "distinct_keys_per_bias": {"false", "true"},
"per_kernel": {kernel: count}, "variants": [{"key", "kernel", "has_bias": [bool], "m": "1-4,9"}]}}.

    python scripts/count_variants.py [--count-shape qwen3-4b:gate_up] [--json OUT.json]
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

# offline_compile first: it turns the Triton interpreter off before dami_kernels defines the kernels.
from offline_compile import triton_shim
from offline_compile.harness import (
    DTYPES,
    KERNEL_NAMES,
    LauncherHarness,
    base_parser,
    config_sources,
    select_shapes,
    start,
)

# isort: split
from dami_kernels.ops.common import configs


def count_variants(args, device: str) -> int:
    """Distinct Triton cache keys of a decode loop (M = 1..64) and a prefill loop (M = 1..8192)."""
    shapes = select_shapes(args.count_shape)
    if len(shapes) != 1:
        raise SystemExit(f"--count-shape must name one linear, got {args.count_shape!r}")
    (n, k), names = next(iter(shapes.items()))
    dt = (args.dtypes or "bf16").split(",")[0]
    sources, _ = config_sources([int(args.sms.split(",")[0])])
    harness = LauncherHarness(sources[:1])
    loops = {"decode": (configs.DECODE_MAX_M, "per_sequence"), "prefill": (args.prefill_max_m, "scalar")}
    result = {"shape": [n, k], "linears": names, "dtype": dt, "config_source": sources[0].name}
    t0 = time.time()
    with triton_shim.counting_cache_keys(KERNEL_NAMES, device) as key_of:
        for loop, (max_m, form) in loops.items():
            keys: dict[str, dict] = {}  # key digest -> {"kernel", "bias", "m"}
            for bias in (False, True):
                for m in range(1, max_m + 1):
                    launches, _ = harness.run(0, n, k, m, DTYPES[dt], bias, form)
                    for launch in launches:
                        key = key_of(launch.kernel, launch.grid, launch.args, launch.kwargs)
                        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
                        entry = keys.setdefault(
                            digest, {"kernel": KERNEL_NAMES[launch.kernel], "bias": set(), "m": set()}
                        )
                        entry["bias"].add(bias)
                        entry["m"].add(m)
            variants = [
                {"key": d, "kernel": e["kernel"], "has_bias": sorted(e["bias"]), "m": _ranges(sorted(e["m"]))}
                for d, e in keys.items()
            ]
            by_bias = {str(b).lower(): sum(1 for e in keys.values() if b in e["bias"]) for b in (False, True)}
            result[loop] = {
                "m": [1, max_m],
                "lam_form": form,
                "distinct_keys": len(keys),
                "distinct_keys_per_bias": by_bias,
                "per_kernel": {
                    name: sum(1 for e in keys.values() if e["kernel"] == name) for name in KERNEL_NAMES.values()
                },
                "variants": variants,
            }
            print(
                f"{loop} M=1..{max_m} ({form} λ, {names[0]} {n}x{k} {dt}): {len(keys)} distinct compiled "
                f"variants with and without bias ({by_bias['false']} without bias, {by_bias['true']} with)",
                flush=True,
            )
            for v in variants:
                print(f"    {v['kernel']} bias={'/'.join(map(str, v['has_bias']))}: M in {v['m']}")
    result["elapsed_s"] = round(time.time() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _ranges(values: list[int]) -> str:
    out, lo = [], None
    for i, v in enumerate(values):
        if lo is None:
            lo = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{lo}" if lo == v else f"{lo}-{v}")
            lo = None
    return ",".join(out)


def main() -> int:
    parser = base_parser(__doc__, dtypes_default="bf16; only the first is used")
    parser.add_argument("--count-shape", default="qwen3-4b:gate_up", help="one model:linear")
    parser.add_argument("--prefill-max-m", type=int, default=8192)
    args = parser.parse_args()
    return count_variants(args, start(args))


if __name__ == "__main__":
    sys.exit(main())
