"""Child of test_triton_direct.py (TRITON_INTERPRET=0): a real sm_90 launch path into the stub libcuda
(bench/host_overhead.decode_real's setup), recording what the C launcher receives on a normal replay and on
a direct one. Prints a JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "scripts")]

import host_overhead  # noqa: E402
import torch  # noqa: E402

from dami_kernels.ops.common import triton_direct  # noqa: E402
from dami_kernels.ops.interp_linear import launch as linear_launch  # noqa: E402

layers = []
forward = host_overhead.InterpLinear.forward
host_overhead.InterpLinear.forward = lambda self, x: layers.append(self) or forward(self, x)
host_overhead.decode_real(200)  # compiles, replays: the memo holds a direct launcher
host_overhead.InterpLinear.forward = forward
layer = layers[0]
memo = layer._memo[0]
compiled = next(iter(linear_launch.interp_linear_kernel.device_caches[0][0].values()))
launcher = compiled.run
seen = []
real_launch = launcher.launch
launcher.launch = lambda *a: seen.append(a) or real_launch(*a)
from triton.runtime.driver import driver  # noqa: E402

stub = driver.active
x = torch.empty(1, 1, 9728, dtype=torch.bfloat16)
with torch.no_grad():
    direct = memo.direct
    memo.direct = None  # a normal replay (kernel[grid](...)), which builds the direct launcher again
    y_normal = layer(x)
    rebuilt = isinstance(memo.direct, triton_direct.DirectLauncher)
    y_direct = layer(x)  # the rebuilt direct launcher (it holds the recording launch function)
normal, fast = seen  # the C launcher's arguments: the normal path's, then the direct path's
same = [
    i
    for i, (a, b) in enumerate(zip(normal, fast, strict=True))
    if a is b or (not isinstance(a, torch.Tensor) and type(a) is type(b) and a == b)
]
report = {
    "launches": len(seen),
    "rebuilt": rebuilt,
    "direct_type": type(direct).__name__,
    "n_args": [len(normal), len(fast)],
    "differ": [i for i in range(len(normal)) if i not in same],
    "x_slots": [[i for i, a in enumerate(args) if a is x] for args in (normal, fast)],
    "y_slots": [[i for i, a in enumerate(args) if a is y] for args, y in ((normal, y_normal), (fast, y_direct))],
    "hooks_normal": [type(a).__name__ for a in normal[10:13]],
    "hooks_fast": [repr(a) for a in fast[10:13]],
    "last_grid": list(stub.last_launch()),
    "plan_grid": list(memo.grid),
    "unavailable": triton_direct.UNAVAILABLE,
}
print(json.dumps(report))
