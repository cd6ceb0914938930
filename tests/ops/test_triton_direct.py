"""The direct launch of a cached compiled kernel (ops/common/triton_direct.py): the same kernel, grid and
arguments as Triton's own launch path, and a visible fallback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from dami_kernels.ops.common import triton_direct  # noqa: E402

CHILD = Path(__file__).with_name("direct_launch_child.py")


def test_direct_launch_is_off_on_an_untested_triton(monkeypatch):
    """On a Triton release the direct path was not checked on, it is off (launches take kernel[grid]) and says why."""
    import importlib

    import triton

    monkeypatch.setattr(triton, "__version__", "99.0.0")
    fresh = importlib.reload(triton_direct)
    try:
        assert fresh.UNAVAILABLE is not None and "99.0.0" in fresh.UNAVAILABLE
    finally:
        monkeypatch.undo()
        importlib.reload(triton_direct)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the stub libcuda and Triton's C launcher need gcc")
@pytest.mark.skipif(
    triton_direct.UNAVAILABLE is not None,
    reason="the direct path is off on this Triton (see the test above); the stub driver speaks triton 3.6's launcher",
)
def test_direct_launch_passes_what_triton_passes():
    """A real sm_90 launch path (offline compile, Triton's C launcher, stub libcuda) in a child process:
    the direct replay hands the C launcher the normal replay's arguments; only the output tensor (a new
    one per call) and Triton's launch metadata and empty hook chains (None on the direct path) differ."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, str(CHILD)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["unavailable"] is None and r["direct_type"] == "DirectLauncher" and r["rebuilt"]
    assert r["launches"] == 2 and r["n_args"][0] == r["n_args"][1]
    assert r["hooks_normal"] == ["LazyDict", "HookChain", "HookChain"] and r["hooks_fast"] == ["None"] * 3
    head = 13  # grid x3, stream, function, cooperative, pdl, scratch x2, metadata, launch metadata, hooks x2
    assert r["x_slots"] == [[head], [head]] and r["y_slots"] == [[head + 6], [head + 6]]
    assert r["differ"] == [10, 11, 12, head + 6]
    assert r["last_grid"][:2] == r["plan_grid"] and r["last_grid"][2] == 1


def test_missing_internals_warn_once(monkeypatch):
    monkeypatch.setattr(triton_direct, "UNAVAILABLE", "triton internals missing: test")
    monkeypatch.setattr(triton_direct, "_WARNED", False)
    x = torch.zeros(4)
    with pytest.warns(RuntimeWarning, match="direct Triton launch off"):
        assert triton_direct.direct_launcher(object(), (1,), (x,), {}, ((0,),)) is None
    assert triton_direct._WARNED
    assert triton_direct.direct_launcher(object(), (1,), (x,), {}, ((0,),)) is None  # no second warning


def test_changed_internals_turn_it_off(monkeypatch):
    """An internal of another shape (here: a kernel cache entry that does not unpack) turns the path off."""
    monkeypatch.setattr(triton_direct, "_WARNED", False)
    monkeypatch.setattr(triton_direct, "UNAVAILABLE", None)
    if not hasattr(triton_direct, "JITFunction"):
        pytest.skip("this Triton lacks the internals")

    class Kernel(triton_direct.JITFunction):
        def __init__(self):
            self.pre_run_hooks, self.device_caches = [], {0: ()}

    class Active:
        def get_current_device(self):
            return 0

    monkeypatch.setattr(triton_direct, "driver", type("Driver", (), {"active": Active()})())

    with pytest.warns(RuntimeWarning, match="ValueError"):
        assert triton_direct.direct_launcher(Kernel(), (1,), (torch.zeros(4),), {}, ((0,),)) is None
    assert "ValueError" in triton_direct.UNAVAILABLE


def test_interpreter_replays_never_go_direct():
    from dami_kernels.modules import InterpLinear, LambdaState

    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("the CPU tier runs under TRITON_INTERPRET")
    lin = torch.nn.Linear(32, 16, bias=False)
    w_t = torch.nn.Parameter(torch.randn(16, 32), requires_grad=False)
    layer = InterpLinear.from_linear(lin, LambdaState(torch.tensor([0.3])), w_t, None, backend="triton")
    with torch.no_grad():
        for _ in range(3):
            layer(torch.randn(1, 1, 32))
    assert layer._memo[0] is not None and layer._memo[0].direct in (None, False)
