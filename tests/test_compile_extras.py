"""Occupancy (workbench.harness.occupancy) by hand; `python -m workbench.bench.resources --ptx/--sass`; and
the warp kernels compiled for sm_90 with the hardware's shuffle segments — the last two in
subprocesses with the simulator off (Numba fixes the mode at import)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from workbench.harness.occupancy import occupancy

ENV = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}


@pytest.mark.parametrize("threads, regs, smem, blocks, warps, limit", [
    # flash2 at D = 64: 4 warps of 128 regs -> 4096 regs a warp, 4 per sub-partition: 16 warps
    (128, 128, 38400, 4, 16, "registers"),
    # flash2 at D = 128: 168 regs -> 5376 a warp, 3 per sub-partition (12 warps = 6 blocks), but
    # 39936 + 1024 reserved = 40960 B of shared memory a block: 233472 // 40960 = 5 blocks
    (64, 168, 39936, 5, 10, "shared memory"),
    (32, 16, 0, 32, 32, "blocks"),  # tiny blocks: the 32-block limit
    (1024, 32, 0, 2, 64, "registers"),  # 2 blocks by registers and by threads: registers named first
    (48, 40, 100, 24, 48, "registers"),  # 48 threads = 2 warps; 40·32 = 1280 regs a warp -> 12 a sub
    (256, 64, 60000, 3, 24, "shared memory"),  # 61024 -> 61056 B a block (128 B units) -> 3
    (128, 256, 0, 0, 0, "registers"),  # over 255 registers: does not launch
])
def test_occupancy_by_hand(threads, regs, smem, blocks, warps, limit):
    occ = occupancy(threads, regs, smem)
    assert (occ.blocks_per_sm, occ.warps_per_sm, occ.limited_by) == (blocks, warps, limit)
    assert occ.occupancy == warps / 64


def test_occupancy_refuses_nonsense():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        occupancy(0, 32, 0)


def _nvdisasm():
    from cuda import pathfinder

    return pathfinder.find_nvidia_binary_utility("nvdisasm")


def test_inspect_occupancy_ptx_and_sass(tmp_path):
    out = tmp_path / "usage.json"
    cmd = [sys.executable, "-m", "workbench.bench.resources", "--kernels", "online", "--dim", "64",
           "--dtype", "float32", "--json", str(out), "--ptx", str(tmp_path / "ptx"),
           "--sass", str(tmp_path / "sass")]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    if _nvdisasm() is None:
        assert proc.returncode == 3 and "nvdisasm" in proc.stderr, proc.stderr[-2000:]
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "occupancy" in proc.stdout and "limited by" in proc.stdout
    (u,) = json.loads(out.read_text())
    occ = occupancy(u["threads"], u["registers"], u["shared_bytes"])
    assert (u["blocks_per_sm"], u["warps_per_sm"], u["limited_by"]) == (
        occ.blocks_per_sm, occ.warps_per_sm, occ.limited_by)
    ptx = (tmp_path / "ptx" / "online-online-float32-d64.ptx").read_text()
    assert ".target sm_90" in ptx and ".entry" in ptx
    sass = (tmp_path / "sass" / "online-online-float32-d64.sass").read_text()
    assert "sm_90" in sass and "EXIT" in sass and "FFMA" in sass


def test_warp_kernels_compile_for_sm90_with_hardware_segments():
    """shfl_up(width=8) passes c = (32 - 8) << 8 to PTX shfl.sync, shfl_xor(width=16)
    c = 16 << 8 | 31 — the segment is the hardware's, not arithmetic around a full-warp shuffle;
    the warp softmax's reductions are shfl.sync.bfly; the probes of Numba's own intrinsics compile."""
    script = textwrap.dedent("""
        import re, workbench
        from numba import cuda, types
        from workbench.sim import probes
        from workbench.sim.warps import UP, BFLY
        from workbench.kernels import warp_softmax
        i32, u32 = types.int32, types.uint32
        sig = (i32[:, :], i32[:, :], u32[:], i32[:], i32[:, :])
        for mode, width, c in ((UP, 8, 6144), (BFLY, 16, 4127)):
            ptx, _ = cuda.compile_ptx(probes.shuffle_probe(mode, width).py_func, sig, cc=(9, 0))
            (reg,) = re.findall(r"shfl\\.sync\\.\\w+\\.b32\\s+\\S+, \\S+, \\S+, (%r\\d+)", ptx)
            assert re.search(r"mov\\.u32\\s+" + reg + ", " + str(c) + ";", ptx), (mode, width)
        f32 = types.float32
        sig_f32 = (f32[:, :], i32[:, :], u32[:], i32[:], f32[:, :])
        for kernel in (*probes.NUMBA_PROBES.values(), probes.shuffle_probe(BFLY, 4)):
            cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))  # Numba's own shuffles (width 32)
            cuda.compile_ptx(kernel.py_func, sig_f32, cc=(9, 0))
        cuda.compile_ptx(probes.ballot_probe.py_func, sig, cc=(9, 0))
        ptx, _ = cuda.compile_ptx(warp_softmax.build(8).py_func, (f32[:, :], f32[:, :], f32[:]),
                                  cc=(9, 0))
        assert len(re.findall(r"shfl\\.sync\\.bfly\\.b32", ptx)) >= 6, ptx
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
