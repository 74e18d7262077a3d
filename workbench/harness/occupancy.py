"""Occupancy: how many blocks of a kernel an SM holds at once, and what limits it.

An SM keeps several blocks resident and switches between their warps to hide latency. How many fit
is the smallest of four limits, computed as CUDA's occupancy calculator does (cuda_occupancy.h)
for the H100 (compute capability 9.0):

- registers: each warp takes regs/thread × 32 registers, rounded up to 256; each of the SM's 4
  sub-partitions has 65536 / 4 registers for the warps placed on it (warps/SM by registers =
  4 · ⌊16384 / regs-per-warp⌋); blocks = ⌊that / warps per block⌋;
- shared memory: each block takes its static + dynamic shared memory plus 1 KiB the system
  reserves, rounded up to 128 bytes, out of 228 KiB per SM (at most 227 KiB per block, and Numba's
  static arrays at most 48 KiB);
- threads: 2048 per SM (64 warps), counted in whole warps;
- blocks: 32 per SM.

Occupancy = resident warps / 64. `scripts/gpu_warps.py` checks these numbers against the driver's
cuOccupancyMaxActiveBlocksPerMultiprocessor on the H100.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.kernels import hardware


@dataclass(frozen=True)
class SMLimits:
    """The per-SM limits the calculator uses: kernels/hardware's facts of a GPU, plus the
    allocation granules of compute capability 9.0 (cuda_occupancy.h), which hardware does not hold."""

    name: str
    regs_per_sm: int
    max_regs_per_thread: int
    smem_per_sm: int
    smem_per_block_max: int  # with the opt-in attribute; 48 KiB static
    smem_reserved_per_block: int
    max_threads_per_sm: int
    reg_alloc_unit: int = 256  # registers, per warp
    sub_partitions: int = 4
    smem_alloc_unit: int = 128
    max_blocks_per_sm: int = 32
    warp_size: int = 32

    @classmethod
    def of(cls, gpu: hardware.GPU) -> "SMLimits":
        return cls(f"{gpu.name} (sm_{gpu.compute_capability[0]}{gpu.compute_capability[1]})",
                   gpu.regs_per_sm, gpu.max_regs_per_thread, gpu.smem_per_sm, gpu.smem_optin_per_block,
                   gpu.smem_reserved_per_cta, gpu.max_threads_per_sm)


H100 = SMLimits.of(hardware.H100)
H200 = SMLimits.of(hardware.H200)  # the same SM: only the name differs


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    occupancy: float  # resident warps / the SM's maximum
    limited_by: str  # "registers", "shared memory", "threads" or "blocks"
    by_registers: int
    by_shared: int
    by_threads: int
    by_blocks: int


def occupancy(threads: int, registers: int, shared_bytes: int, dynamic_shared: int = 0,
              sm: SMLimits = H100) -> Occupancy:
    """Resident blocks and warps per SM for a kernel launched with `threads` per block that uses
    `registers` per thread and `shared_bytes` (+ `dynamic_shared`) of shared memory per block."""
    if threads < 1 or registers < 0 or shared_bytes < 0:
        raise ValueError(f"threads must be >= 1 and registers, shared_bytes >= 0; got {threads}, "
                         f"{registers}, {shared_bytes}")
    warps = -(-threads // sm.warp_size)
    max_warps = sm.max_threads_per_sm // sm.warp_size
    if registers > sm.max_regs_per_thread:
        by_regs = 0
    elif registers == 0:
        by_regs = sm.max_blocks_per_sm
    else:
        per_warp = _round_up(registers * sm.warp_size, sm.reg_alloc_unit)
        warps_by_regs = (sm.regs_per_sm // sm.sub_partitions // per_warp) * sm.sub_partitions
        by_regs = warps_by_regs // warps
    smem = shared_bytes + dynamic_shared
    if smem > sm.smem_per_block_max:
        by_smem = 0
    else:
        per_block = _round_up(smem + sm.smem_reserved_per_block, sm.smem_alloc_unit)
        by_smem = sm.smem_per_sm // per_block
    by_threads = max_warps // warps
    limits = {"registers": by_regs, "shared memory": by_smem, "threads": by_threads,
              "blocks": sm.max_blocks_per_sm}
    blocks = min(limits.values())
    limited_by = min(limits, key=lambda k: (limits[k], list(limits).index(k)))
    return Occupancy(blocks, blocks * warps, blocks * warps / max_warps, limited_by,
                     by_regs, by_smem, by_threads, sm.max_blocks_per_sm)
