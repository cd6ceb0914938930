"""Direct launch of a cached compiled Triton kernel, for replayed decode launches (host time).

Every Triton internal the package relies on is used here alone, so that a Triton upgrade breaks this file
only; written against triton 3.6. `direct_launcher` finds the `CompiledKernel` that `kernel[grid](*args,
**kwargs)` just ran, the way `JITFunction.run` does (its binder, `compute_cache_key`, the per-device kernel
cache), and returns a `DirectLauncher`: the compiled kernel's launcher with the bound arguments packed once,
so a replay skips the binder, the specialization and the cache lookup (as vLLM and SGLang launch).

Where this Triton lacks an internal used here, the direct path is off and launches take `kernel[grid](...)`:
`UNAVAILABLE` then says why, and a RuntimeWarning says so once. Under TRITON_INTERPRET callers do not ask.
"""

from __future__ import annotations

import warnings

# The Triton releases whose launch internals this module was checked against (argument packing equal to
# JITFunction.run's, tests/ops/test_triton_direct.py). On any other release the direct path stays off, visibly:
# triton 3.9, for one, launches through the driver's generic `utils.launch` instead of a per-kernel launcher.
TESTED_TRITON = ("3.6",)

try:
    import triton
    from triton import knobs
    from triton.knobs import HookChain
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction, compute_cache_key

    UNAVAILABLE: str | None = None
    if not triton.__version__.startswith(TESTED_TRITON):
        UNAVAILABLE = f"triton {triton.__version__} is not one the direct launch was checked on ({TESTED_TRITON})"
except ImportError as err:  # another Triton layout
    UNAVAILABLE = f"triton internals missing: {err}"

_WARNED = False


def _off(reason: str) -> None:
    """Turn the direct path off for the process, visibly (a one-time warning, `UNAVAILABLE`)."""
    global UNAVAILABLE, _WARNED
    UNAVAILABLE = UNAVAILABLE or reason
    if not _WARNED:
        _WARNED = True
        warnings.warn(
            f"dami_kernels: direct Triton launch off ({UNAVAILABLE}); launches go through kernel[grid](...)",
            RuntimeWarning,
            stacklevel=3,
        )


class DirectLauncher:
    """One launch of a compiled kernel with fixed grid and arguments, except the tensors at `varying`
    (groups of argument positions, one tensor per group). Calling it with those tensors launches and
    returns True, or returns False (nothing launched: the caller launches the normal way) when the launch
    could differ from Triton's: a tensor not 16-byte aligned (another specialization), another current
    device, or a launch hook set (profilers: Triton passes them launch metadata, built per launch)."""

    __slots__ = ("launch", "head", "grid", "values", "varying", "device")

    def __init__(self, compiled, grid: tuple, values: list, varying: tuple[tuple[int, ...], ...], device):
        launcher = compiled.run  # a property: loads the module on first use
        head: tuple = (compiled.function, compiled.packed_metadata, None, None, None)  # no launch metadata, no hooks
        if _no_scratch(launcher):  # the C launch function itself, without CudaLauncher.__call__ (no scratch)
            self.launch = launcher.launch
            self.head = head[:1] + (launcher.launch_cooperative_grid, launcher.launch_pdl, None, None) + head[1:]
        else:
            self.launch, self.head = launcher, head
        self.grid = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        self.values, self.varying, self.device = values, varying, device
        for slots in varying:
            for i in slots:
                values[i] = None  # no reference to the first call's tensors

    def __call__(self, *tensors) -> bool:
        active = driver.active
        if not _hooks_idle(knobs.runtime) or active.get_current_device() != self.device:
            return False
        values = self.values.copy()
        for slots, t in zip(self.varying, tensors, strict=True):
            if t.data_ptr() & 15:
                return False
            for i in slots:
                values[i] = t
        g0, g1, g2 = self.grid
        self.launch(g0, g1, g2, active.get_current_stream(self.device), *self.head, *values)
        return True


def _no_scratch(launcher) -> bool:
    """True for Triton's CUDA launcher of a kernel without global or profile scratch memory."""
    names = ("launch", "launch_cooperative_grid", "launch_pdl", "global_scratch_size", "profile_scratch_size")
    return (
        type(launcher).__name__ == "CudaLauncher"
        and all(hasattr(launcher, name) for name in names)
        and not launcher.global_scratch_size
        and not launcher.profile_scratch_size
    )


def _hooks_idle(runtime) -> bool:
    """True when no launch hook would run (None, or Triton's default: an empty HookChain)."""
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and (type(hook) is not HookChain or hook.calls):
            return False
    return True


def direct_launcher(kernel, grid: tuple, args: tuple, kwargs: dict, varying: tuple[tuple[int, ...], ...]):
    """The `DirectLauncher` of the launch `kernel[grid](*args, **kwargs)` that just ran, or None: the kernel
    is not compiled and cached under this launch's key, the tensors at `varying` are not 16-byte aligned,
    or this Triton lacks the internals (then `UNAVAILABLE` and a one-time warning say so)."""
    if UNAVAILABLE is not None:
        _off(UNAVAILABLE)
        return None
    if not isinstance(kernel, JITFunction) or kernel.pre_run_hooks or callable(grid):
        return None
    if any(args[slots[0]].data_ptr() & 15 for slots in varying):
        return None
    try:
        device = driver.active.get_current_device()
        kernel_cache, key_cache, _target, _backend, binder = kernel.device_caches[device]
        kw = dict(kwargs)  # what JITFunction.run adds before binding
        kw["debug"] = kw.get("debug", kernel.debug) or knobs.runtime.debug
        kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        bound, specialization, options = binder(*args, **kw)
        compiled = kernel_cache.get(compute_cache_key(key_cache, specialization, options))
        if compiled is None or hasattr(compiled, "result"):  # not compiled here, or compiling asynchronously
            return None
        return DirectLauncher(compiled, tuple(grid), list(bound.values()), varying, device)
    except (AttributeError, TypeError, ValueError, KeyError, RuntimeError) as err:
        _off(f"{type(err).__name__}: {err}")
        return None
