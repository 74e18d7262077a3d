"""What the kernels assume about the GPU, in one place: per-GPU facts, the launch-bounds rule, the
jit options every tiled rung uses, and the simulator shims.

Facts. The rungs size their tiles and their register budgets for Hopper (sm_90). `H100` and `H200`
are the two GPUs this project measures on. They share the GH100 chip, so every fact a kernel is
compiled against is the same for both (132 SMs, 228 KiB of shared memory and 64K registers per SM);
they differ in device memory (HBM3 80 GB at 3.35 TB/s, HBM3e 141 GB at 4.8 TB/s). `current()`
reads the facts from the device's own attributes when a GPU is present (driver attributes, via
`numba.cuda.get_current_device()`), and falls back to the H100's when there is none (compiling for
sm_90 on a CPU machine, or the simulator). Peak rates are the datasheets' (SXM, boost clock):
what a measurement is compared with, never what a kernel is sized by.

Launch bounds. `launch_bounds=(threads, min_blocks)` tells ptxas to fit `min_blocks` CTAs of
`threads` threads into an SM's register file: it caps registers at 64K / (min_blocks · threads).
`min_blocks` asks for as many CTAs as the shared memory admits, but no more warps than the rung's
`warps_per_sm` (more CTAs than that would only squeeze registers into spills).

Dynamic shared memory. Numba's shared arrays are static, and sm_90 links at most 48 KiB of them.
A kernel that declares `cuda.shared.array(0, dtype)` gets the launch's dynamic shared memory
(`kernel[grid, block, stream, nbytes]`), up to 227 KiB per block on Hopper, but above 48 KiB only
after its limit is raised on the compiled function. numba-cuda has no public call for that
(NVIDIA/numba-cuda#94): `allow_dynamic_shared` reaches into its compiled kernel for the driver
handle, in this one place.

Simulator. Numba's simulator refuses `launch_bounds`, an alignment other than None, and
`cuda.syncwarp`; `jit_options`, `ALIGN` and `warp_sync` give each target what it takes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from numba import config as numba_config
from numba import cuda

KiB = 1024
STATIC_SHARED = 48 * KiB  # Numba's shared arrays are static: sm_90 links at most 48 KiB of them


@dataclass(frozen=True)
class GPU:
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    smem_per_sm: int  # shared memory an SM shares among its CTAs (bytes)
    smem_reserved_per_cta: int  # taken by the system from that, per resident CTA
    smem_static_per_block: int  # what a kernel's static shared arrays may take (STATIC_SHARED)
    smem_optin_per_block: int  # dynamic shared memory a block may take once its limit is raised
    max_threads_per_block: int
    max_threads_per_sm: int
    regs_per_sm: int
    max_regs_per_thread: int
    l2_bytes: int
    # datasheet peaks (SXM, boost clock)
    peak_fp32_tflops: float  # FFMA on the CUDA cores
    peak_fp16_tensor_tflops: float  # dense mma, float32 accumulation
    hbm_gbps: float  # device memory bandwidth, GB/s


H100 = GPU("NVIDIA H100 80GB HBM3", (9, 0), 132, 228 * KiB, 1 * KiB, STATIC_SHARED, 227 * KiB, 1024, 2048,
           65536, 255, 50 * 1024 * KiB, 66.9, 989.4, 3350.0)
H200 = replace(H100, name="NVIDIA H200", hbm_gbps=4800.0)
KNOWN = (H100, H200)


def _from_device(dev) -> GPU:
    """The present device's facts: its driver attributes, the datasheet peaks of the known GPU
    whose name it carries (the H100's for an unknown one)."""
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    base = next((g for g in reversed(KNOWN) if g.name.split()[1] in name), H100)
    return replace(
        base, name=name, compute_capability=tuple(dev.compute_capability),
        sm_count=dev.MULTIPROCESSOR_COUNT,
        smem_per_sm=dev.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
        smem_reserved_per_cta=dev.RESERVED_SHARED_MEMORY_PER_BLOCK,
        smem_static_per_block=min(dev.MAX_SHARED_MEMORY_PER_BLOCK, STATIC_SHARED),
        smem_optin_per_block=dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        max_threads_per_block=dev.MAX_THREADS_PER_BLOCK,
        max_threads_per_sm=dev.MAX_THREADS_PER_MULTIPROCESSOR,
        regs_per_sm=dev.MAX_REGISTERS_PER_MULTIPROCESSOR, l2_bytes=dev.L2_CACHE_SIZE)


@functools.cache
def current() -> GPU:
    """The GPU the kernels are compiled for: the present device's facts, else the H100's."""
    if numba_config.ENABLE_CUDASIM:
        return H100
    try:
        return _from_device(cuda.get_current_device())
    except Exception:  # no driver or no device: compiling for sm_90 ahead of time
        return H100


def min_blocks(threads, smem, warps_per_sm, gpu=None):
    """CTAs per SM the register budget is sized for (launch_bounds' second number): as many as
    the shared memory admits (each CTA also takes the reserved KiB), but no more than
    warps_per_sm warps."""
    gpu = gpu or current()
    return max(1, min(warps_per_sm * 32 // threads,
                      gpu.smem_per_sm // (smem + gpu.smem_reserved_per_cta)))


def jit_options(threads, smem, warps_per_sm):
    """`cuda.jit` options of a tiled kernel: launch bounds off-simulator (it knows none)."""
    if numba_config.ENABLE_CUDASIM:
        return {}
    return {"launch_bounds": (threads, min_blocks(threads, smem, warps_per_sm))}


def allow_dynamic_shared(kernel, nbytes):
    """Let `kernel` (a dispatcher specialised to one signature: `dispatcher.specialize(*args)`)
    launch with `nbytes` of dynamic shared memory. Below 48 KiB nothing is needed; above, the
    driver's limit for the compiled function is raised (once per kernel and size; the simulator
    has no limit). The handle is Numba's internal `CUkernel` (`cuFuncSetAttribute` refuses it)."""
    if numba_config.ENABLE_CUDASIM or nbytes <= STATIC_SHARED:
        return
    limit = current().smem_optin_per_block
    if nbytes > limit:
        raise ValueError(f"{nbytes} bytes of dynamic shared memory per block is over this GPU's "
                         f"opt-in limit of {limit}: use smaller tiles")
    _raise_limit(kernel, int(nbytes))


@functools.lru_cache(maxsize=None)
def _raise_limit(kernel, nbytes):
    from cuda.bindings import driver

    if len(kernel.overloads) != 1:
        raise TypeError("allow_dynamic_shared takes a dispatcher specialised to one signature "
                        "(kernel.specialize(*args))")
    (compiled,) = kernel.overloads.values()
    handle = compiled._codelibrary.get_cufunc().handle  # numba-cuda internals (see the module)
    dev = cuda.get_current_device().id
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    (err,) = driver.cuKernelSetAttribute(attr, nbytes, handle, dev)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuKernelSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {nbytes}) failed: {err}")


# Shared rows start 16-byte aligned, so 4 floats are one 128-bit load (the simulator refuses an
# alignment argument other than None).
ALIGN = None if numba_config.ENABLE_CUDASIM else 16

if numba_config.ENABLE_CUDASIM:
    @cuda.jit(device=True, inline="always")
    def warp_sync():
        """The simulator has no syncwarp: a block barrier is the (stronger) stand-in."""
        cuda.syncthreads()
else:
    @cuda.jit(device=True, inline="always")
    def warp_sync():
        """A barrier among the threads of one warp (enough when only they share the data)."""
        cuda.syncwarp()
