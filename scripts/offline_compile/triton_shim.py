"""Every use of Triton internals by the offline compile tools (scripts/compile_check.py,
scripts/compile_check_moe.py, scripts/count_variants.py), so that a Triton upgrade breaks this file alone.
Written against triton 3.6; the rest of the tools sees launches (kernel, grid, args, kwargs), plain data
(`CompiledFacts`) and cache keys (strings).

How a recorded launch is compiled: `JITFunction.warmup` runs Triton's own launch path
(`JITFunction.run(warmup=True)`): the binder made by `create_function_from_signature` applies
`native_specialize_impl` to each argument (ints equal to 1 become constants, multiples of 16 and 16-byte-aligned
pointers get divisibility hints, `do_not_specialize` arguments are left alone), `compute_cache_key` gives the cache
key, `_pack_args` the signature/constants/attributes, and `triton.compile(ASTSource(...))` compiles. The only thing
replaced is the active driver (`triton.runtime.driver.driver.set_active`), by an offline one whose current target
is `GPUTarget("cuda", ARCH, 32)`; Triton's per-device kernel cache (`JITFunction.device_caches`) then
deduplicates identical variants (same cache key) for free.

How a launch runs for real without a GPU (`use_stub_launch_target`, for host-time measurements): the active
driver is an offline one whose `launcher_cls` is Triton's own `CudaLauncher` (the generated C launcher, built
by gcc against the wheel's cuda.h), and `libcuda.so.1` is a stub (`STUB_LIBCUDA`, loaded first): every driver
call it answers is a no-op (`cuLaunchKernelEx` counts the launch and keeps its grid; `cuPointerGetAttribute`
returns the pointer itself, so CPU stand-in tensors pass). `load_binary` hands out fake module/function handles.
So `JITFunction.run` (binder, specialization, cache key, lookup) and the C launcher (argument parsing and
packing, `data_ptr()` calls) run as on a GPU; only the driver's work is missing.

How cache keys are counted without compiling: `knobs.runtime.jit_cache_hook` receives the key of
`JITFunction.run` on a cache miss and skips the compilation; a placeholder is then cached under it, so a later
launch with the same key is a cache hit that returns it.
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"  # shipped in the wheel


class OfflineDriver:
    """The active driver while compiling: it answers the target (and a device/stream handle that is
    only used as a cache key); nothing here ever launches."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return f"offline-{self.target.backend}-{self.target.arch}"

    def get_current_stream(self, device=None):
        return None


def use_offline_target(arch: int) -> str:
    """Make an offline driver for `GPUTarget("cuda", arch, 32)` Triton's active driver. Returns its device
    name, the key of the kernels' per-device caches."""
    offline = OfflineDriver(GPUTarget("cuda", arch, 32))
    driver.set_active(offline)
    return offline.get_current_device()


def compile_launch(kernel, grid: tuple, args: tuple, kwargs: dict):
    """The compiled kernel (Triton's CompiledKernel) this launch runs: compiled on a cache miss, else the
    one in the kernel's cache."""
    return kernel.warmup(*args, grid=grid, **kwargs)


def cache_key(kernel, device: str, ck) -> str:
    """The Triton cache key under which `compile_launch` stored the compiled kernel `ck`."""
    cache = kernel.device_caches[device][0]
    return next(k for k, v in cache.items() if v is ck)


STUB_LIBCUDA = r"""
#include <stdint.h>
typedef struct { unsigned gx, gy, gz, bx, by, bz, smem; } cfg_t;
static long long n_launch = 0;
static unsigned last[4];
int cuCtxGetCurrent(void **p) { *p = (void *)1; return 0; }
int cuCtxSetCurrent(void *p) { return 0; }
int cuDeviceGet(int *d, int o) { *d = 0; return 0; }
int cuDevicePrimaryCtxRetain(void **p, int d) { *p = (void *)1; return 0; }
int cuFuncSetAttribute(void *f, int a, int v) { return 0; }
int cuGetErrorString(int e, const char **s) { *s = "stub libcuda"; return 0; }
int cuPointerGetAttribute(void *data, int attr, uint64_t ptr) { *(uint64_t *)data = ptr; return 0; }
int cuPointerGetAttributes(unsigned n, int *a, void **d, uint64_t ptr) { return 0; }
int cuLaunchKernelEx(const cfg_t *c, void *f, void **params, void **extra) {
  n_launch++; last[0] = c->gx; last[1] = c->gy; last[2] = c->gz; last[3] = c->bx; return 0;
}
long long stub_launches(void) { return n_launch; }
void stub_last(unsigned *out) { for (int i = 0; i < 4; i++) out[i] = last[i]; }
"""


class _StubUtils:
    """The driver utilities a CompiledKernel needs before its first launch: fake handles, sm_90 limits."""

    def load_binary(self, name, kernel, shared, device):
        return 1, 1, 64, 0, 1024  # module, function, registers, spills, max threads per block

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132}


class StubLaunchDriver(OfflineDriver):
    """An offline driver that launches through Triton's real C launcher into the stub libcuda."""

    def __init__(self, target: GPUTarget, stub: ctypes.CDLL):
        super().__init__(target)
        from triton.backends.nvidia.driver import CudaLauncher

        self.launcher_cls, self.utils, self.stub = CudaLauncher, _StubUtils(), stub

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def launches(self) -> int:
        """Launches the stub libcuda received so far."""
        return self.stub.stub_launches()

    def last_launch(self) -> tuple[int, int, int, int]:
        """(grid x, y, z, threads per block) of the last launch."""
        out = (ctypes.c_uint * 4)()
        self.stub.stub_last(out)
        return tuple(out)


def use_stub_launch_target(arch: int = 90) -> StubLaunchDriver:
    """Make Triton launch for real into a stub libcuda (built here with gcc), for `GPUTarget("cuda", arch, 32)`.
    Call before the first launch; CPU tensors stand in for device memory (never touched)."""
    folder = Path(tempfile.mkdtemp(prefix="stub_libcuda_"))
    (folder / "stub.c").write_text(STUB_LIBCUDA)
    lib = folder / "libcuda.so.1"
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(lib), str(folder / "stub.c")]
    subprocess.run(cmd, check=True)
    stub = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # the launcher's dlopen("libcuda.so.1") finds it
    knobs.nvidia.libcuda_path = str(folder)  # Triton links its C launcher against this folder
    active = StubLaunchDriver(GPUTarget("cuda", arch, 32), stub)
    driver.set_active(active)
    return active


@dataclass(frozen=True)
class CompiledFacts:
    """What the analysis reads from a compiled kernel."""

    ptx: str
    ttgir: str  # the final TritonGPU IR (the loads' pointers keep their names here)
    cubin: bytes
    shared_bytes: int  # what Triton checks against the device's opt-in limit
    num_warps: int
    num_stages: int
    specialization: dict[str, str]  # {argument: "*bf16 D" | "i32 D" | "i32" | "=1"}


def compiled_facts(ck) -> CompiledFacts:
    return CompiledFacts(
        ptx=ck.asm["ptx"],
        ttgir=ck.asm["ttgir"],
        cubin=ck.asm["cubin"],
        shared_bytes=int(ck.metadata.shared),
        num_warps=ck.metadata.num_warps,
        num_stages=ck.metadata.num_stages,
        specialization=specialization_of(ck.src),
    )


def specialization_of(src) -> dict[str, str]:
    """The runtime arguments' specialization as Triton computed it (from the compiled ASTSource):
    '*bf16 D' (16-byte aligned pointer), 'i32 D' (multiple of 16), 'i32', or '=1' (a constant)."""
    names = list(src.signature)
    out = {}
    for i, param in enumerate(src.fn.params):
        if param.is_constexpr:
            continue
        name = names[i]
        if (i,) in src.constants and src.signature[name] == "constexpr":
            out[name] = f"={src.constants[(i,)]}"
        else:
            hints = src.attrs.get((i,), [])
            out[name] = src.signature[name] + (" D" if ["tt.divisibility", 16] in hints else "")
    return out


@dataclass(frozen=True)
class _Counted:
    """A placeholder stored in the kernel cache under a counted key (never compiled, never launched)."""

    key: str


@contextmanager
def counting_cache_keys(kernels: Iterable, device: str) -> Iterator[Callable[[object, tuple, tuple, dict], str]]:
    """Within the block, Triton compiles nothing; yields `key_of(kernel, grid, args, kwargs)`, the Triton cache
    key of a launch. On exit the hook is removed and the placeholders leave the caches of `kernels`."""
    seen: list[tuple[str, str]] = []

    def hook(*, key, fn, **_):  # called by JITFunction.run on a cache miss, before compiling
        seen.append((fn.name, key))
        return True  # skip the compilation

    def key_of(kernel, grid: tuple, args: tuple, kwargs: dict) -> str:
        seen.clear()
        ck = kernel.warmup(*args, grid=grid, **kwargs)
        if ck is None:  # a cache miss: the hook saw the key and skipped the compilation
            assert len(seen) == 1, "the cache hook did not see this launch"
            key = seen[0][1]
            # Park a placeholder under the key, so the next launch with this key is a
            # plain cache hit (the miss path costs ~1 ms: it packs the arguments).
            kernel.device_caches[device][0][key] = _Counted(key)
            return key
        assert isinstance(ck, _Counted), ck
        return ck.key

    knobs.runtime.jit_cache_hook = hook
    try:
        yield key_of
    finally:
        knobs.runtime.jit_cache_hook = None
        for kernel in kernels:
            cache = kernel.device_caches[device][0]
            for key in [k for k, v in cache.items() if isinstance(v, _Counted)]:
                del cache[key]
