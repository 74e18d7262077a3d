"""`python -m workbench.inspect`: what each rung costs the chip, compiled for sm_90 with no GPU.

For every rung at its default config, the kernels it would launch on a seed-shaped problem are
compiled to LTO-IR by Numba and linked by nvJitLink for sm_90; the linker's report gives registers,
static shared memory, stack frame and spills (../shared/numba-cuda-notes.md, "Compiling without a
GPU"). Needs the real CUDA target, not the simulator: run it with NUMBA_ENABLE_CUDASIM unset or 0.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import asdict, dataclass

_LINE = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<spill_st>\d+) bytes spill stores, (?P<spill_ld>\d+) bytes spill loads"
    r"[\s\S]*?Used (?P<regs>\d+) registers(?P<rest>[^\n]*)"
)
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class Usage:
    rung: str
    kernel: str
    dtype: str
    head_dim: int
    threads: int
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_bytes: int

    @property
    def blocks_per_sm(self) -> int:
        """Resident blocks per SM on an H100 by registers, shared memory and threads."""
        regs_per_block = max(1, self.registers) * self.threads
        by_regs = 65536 // regs_per_block
        by_smem = (228 * 1024) // (self.shared_bytes + 1024) if self.shared_bytes else 32
        by_threads = 2048 // self.threads
        return max(0, min(by_regs, by_smem, by_threads, 32))


def compile_usage(launch, cc=(9, 0)) -> dict:
    """Compile one planned launch for `cc` and read the linker's resource report."""
    from cuda.core import Linker, LinkerOptions, ObjectCode
    from numba import cuda

    kernel = launch.kernel
    ltoirs, _ = cuda.compile_all(kernel.py_func, launch.argtypes, device=False, abi="numba",
                                 output="ltoir", cc=cc, **_options(kernel))
    linker = Linker(*[ObjectCode.from_ltoir(b) for b in ltoirs],
                    options=LinkerOptions(arch=f"sm_{cc[0]}{cc[1]}", link_time_optimization=True,
                                          verbose=True))
    linker.link("cubin")
    log = linker.get_info_log()
    m = _LINE.search(log)
    if not m:
        raise RuntimeError(f"could not read the linker's report for {launch.name}:\n{log}")
    smem = _SMEM.search(m["rest"])  # after "registers", maybe behind "N bytes cumulative stack size"
    return {
        "registers": int(m["regs"]), "shared_bytes": int(smem[1]) if smem else 0,
        "stack_bytes": int(m["stack"]), "spill_bytes": int(m["spill_st"]) + int(m["spill_ld"]),
    }


def _options(kernel) -> dict:
    """The jit options that change code generation (fastmath, lineinfo, ...), kept when compiling."""
    opts = getattr(kernel, "targetoptions", {}) or {}
    return {k: opts[k] for k in ("fastmath", "lineinfo", "launch_bounds") if k in opts}


def rung_usage(rung, problem, config=None) -> list[Usage]:
    """Resource usage of every distinct kernel a rung launches for `problem` at `config`."""
    from .harness import runner

    cfg = runner.check_config(rung, problem, config)
    seen, usages = set(), []
    for launch in runner.plan(rung, problem, cfg):
        key = (launch.name, launch.argtypes)
        if key in seen:
            continue
        seen.add(key)
        u = compile_usage(launch)
        usages.append(Usage(rung.name, launch.name, problem.dtype, problem.head_dim, launch.threads, **u))
    return usages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default=None, help="comma-separated rung names (default: all)")
    parser.add_argument("--dim", type=int, nargs="+", default=[64, 128], help="head dims to compile")
    parser.add_argument("--dtype", nargs="+", default=["float32", "float16"])
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        print("workbench.inspect compiles for the real GPU target: unset NUMBA_ENABLE_CUDASIM "
              "(or set it to 0) and run again.", file=sys.stderr)
        return 2
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # compile for sm_90 even with no GPU here

    from rich.console import Console
    from rich.table import Table

    from .kernels import LADDER, get
    from .problem import Problem

    rungs = LADDER if not args.kernels else [get(n) for n in args.kernels.split(",")]
    rows: list[Usage] = []
    for rung in rungs:
        for dtype in args.dtype:
            for dim in args.dim:
                problem = Problem(batch=8, heads=32, seq_q=4096, head_dim=dim, dtype=dtype)
                rows += rung_usage(rung, problem)

    table = Table(title="Resource usage per kernel, compiled for sm_90 (H100 limits: 255 regs/thread, "
                        "64K regs and 228 KiB shared per SM)")
    for col in ("rung", "kernel", "dtype", "D", "threads", "regs", "smem B", "stack B", "spill B", "blocks/SM"):
        table.add_column(col, justify="right" if col not in ("rung", "kernel", "dtype") else "left")
    for u in rows:
        table.add_row(u.rung, u.kernel, u.dtype, str(u.head_dim), str(u.threads), str(u.registers),
                      str(u.shared_bytes), str(u.stack_bytes),
                      f"[red]{u.spill_bytes}[/red]" if u.spill_bytes else "0", str(u.blocks_per_sm))
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump([{**asdict(u), "blocks_per_sm": u.blocks_per_sm} for u in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
