"""`python -m workbench.bench.resources`: what each rung costs the chip, compiled for sm_90 with no GPU.

For every rung at its default config, the kernels it would launch on a seed-shaped problem are
compiled to LTO-IR by Numba and linked by nvJitLink for sm_90; the linker's report gives registers,
static shared memory, stack frame and spills (../shared/numba-cuda-notes.md, "Compiling without a
GPU"). A rung that needs an architecture-specific target says so in its module (`CC = (9, 0, "a")`:
flash3's wgmma and setmaxnreg exist only on sm_90a) and is compiled for it. `shared_bytes` is the
static shared memory from the report plus the dynamic shared memory the launch asks for. Needs the real CUDA target, not the simulator: run it with NUMBA_ENABLE_CUDASIM unset or 0.

Beside each kernel: its occupancy on an H100 (resident blocks and warps per SM, and which of
registers, shared memory, threads or the block limit caps them; workbench.harness.occupancy).
`--ptx DIR` writes each kernel's PTX there, `--sass DIR` its SASS (disassembled by nvdisasm from
the `cuda-toolkit[nvdisasm]` wheel, when that is installed; otherwise it says so and exits 3).
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
    def occupancy(self):
        """Resident blocks and warps per SM on an H100, and what limits them."""
        from workbench.harness.occupancy import occupancy

        return occupancy(self.threads, self.registers, self.shared_bytes)

    @property
    def blocks_per_sm(self) -> int:
        return self.occupancy.blocks_per_sm


def arch(cc) -> str:
    """'sm_90' for (9, 0), 'sm_90a' for (9, 0, 'a')."""
    return f"sm_{cc[0]}{cc[1]}{cc[2] if len(cc) > 2 else ''}"


def compile_usage(launch, cc=(9, 0), sass_path=None) -> dict:
    """Compile one planned launch for `cc` and read the linker's resource report (and write the
    linked cubin's SASS to `sass_path`)."""
    from cuda.core import Linker, LinkerOptions, ObjectCode
    from numba import cuda

    kernel = launch.kernel
    ltoirs, _ = cuda.compile_all(kernel.py_func, launch.argtypes, device=False, abi="numba",
                                 output="ltoir", cc=cc, **_options(kernel))
    # (linked files, such as flash2_mma's mma.cu, come back already as ObjectCode)
    linker = Linker(*[b if isinstance(b, ObjectCode) else ObjectCode.from_ltoir(b) for b in ltoirs],
                    options=LinkerOptions(arch=arch(cc), link_time_optimization=True,
                                          verbose=True))
    cubin = linker.link("cubin")
    log = linker.get_info_log()
    if sass_path:
        from numba.cuda.codegen import run_nvdisasm

        with open(sass_path, "w") as f:
            f.write(run_nvdisasm(cubin, ["-c"]))
    m = _LINE.search(log)
    if not m:
        raise RuntimeError(f"could not read the linker's report for {launch.name}:\n{log}")
    smem = _SMEM.search(m["rest"])  # after "registers", maybe behind "N bytes cumulative stack size"
    return {
        "registers": int(m["regs"]), "shared_bytes": (int(smem[1]) if smem else 0) + launch.shared,
        "stack_bytes": int(m["stack"]), "spill_bytes": int(m["spill_st"]) + int(m["spill_ld"]),
    }


def _options(kernel) -> dict:
    """The jit options that change code generation (fastmath, lineinfo, ...), kept when compiling."""
    opts = getattr(kernel, "targetoptions", {}) or {}
    return {k: opts[k] for k in ("fastmath", "lineinfo", "launch_bounds") if k in opts}


def nvdisasm_path():
    """nvdisasm from the CUDA wheels (or the system toolkit), or None."""
    from cuda import pathfinder

    return pathfinder.find_nvidia_binary_utility("nvdisasm")


def _dump_name(rung, launch, problem, ext) -> str:
    return f"{rung.name}-{launch.name}-{problem.dtype}-d{problem.head_dim}.{ext}"


def rung_usage(rung, problem, config=None, ptx_dir=None, sass_dir=None) -> list[Usage]:
    """Resource usage of every distinct kernel a rung launches for `problem` at `config`, with its
    PTX and SASS written to `ptx_dir` and `sass_dir` when given."""
    from workbench.harness import runner

    cfg = runner.check_config(rung, problem, config)
    cc = getattr(rung.module, "CC", (9, 0))
    seen, usages = set(), []
    for launch in runner.plan(rung, problem, cfg):
        key = (launch.name, launch.argtypes)
        if key in seen:
            continue
        seen.add(key)
        if ptx_dir:
            from numba import cuda

            ptx, _ = cuda.compile_ptx(launch.kernel.py_func, launch.argtypes, cc=cc,
                                      **_options(launch.kernel))
            with open(os.path.join(ptx_dir, _dump_name(rung, launch, problem, "ptx")), "w") as f:
                f.write(ptx)
        sass = os.path.join(sass_dir, _dump_name(rung, launch, problem, "sass")) if sass_dir else None
        u = compile_usage(launch, cc, sass_path=sass)
        usages.append(Usage(rung.name, launch.name, problem.dtype, problem.head_dim, launch.threads, **u))
    return usages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.bench.resources", description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default=None, help="comma-separated rung names (default: all)")
    parser.add_argument("--dim", type=int, nargs="+", default=[64, 128], help="head dims to compile")
    parser.add_argument("--dtype", nargs="+", default=["float32", "float16"],
                        help="I/O dtypes (bfloat16 too); a rung is compiled for those it takes")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    parser.add_argument("--ptx", metavar="DIR", default=None, help="write each kernel's PTX here")
    parser.add_argument("--sass", metavar="DIR", default=None,
                        help="write each kernel's SASS here (needs nvdisasm: pip install "
                             "'cuda-toolkit[nvdisasm]')")
    args = parser.parse_args(argv)

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        from workbench import target

        if "set by the user" in target.mode_reason():
            print("workbench.bench.resources compiles for the real GPU target: unset NUMBA_ENABLE_CUDASIM "
                  "(or set it to 0) and run again.", file=sys.stderr)
            return 2
        # `import workbench` chose the simulator (no GPU here), which this process can no longer
        # leave: compile in a fresh one with the real target (sm_90 needs no GPU to compile for).
        import subprocess

        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.run([sys.executable, "-m", "workbench.bench.resources", *argv], env=env).returncode
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # compile for sm_90 even with no GPU here
    if args.sass and nvdisasm_path() is None:
        print("--sass needs nvdisasm, which is not installed here: pip install "
              "'cuda-toolkit[nvdisasm]==13.5.*' (the wheel that matches numba-cuda's CUDA 13.5 "
              "compiler; the system's older nvdisasm cannot read its cubins).", file=sys.stderr)
        return 3
    for folder in (args.ptx, args.sass):
        if folder:
            os.makedirs(folder, exist_ok=True)

    from rich.console import Console
    from rich.table import Table

    from workbench.harness.runner import default_config
    from workbench.kernels import LADDER, get
    from workbench.problem import Problem

    rungs = LADDER if not args.kernels else [get(n) for n in args.kernels.split(",")]
    rows: list[Usage] = []
    skipped = []
    for rung in rungs:
        for dtype in args.dtype:
            for dim in args.dim:
                problem = Problem(batch=8, heads=32, seq_q=4096, head_dim=dim, dtype=dtype)
                if dtype not in rung.module.needs(problem, default_config(rung)).dtypes:
                    skipped.append(f"{rung.name} {dtype}")  # (a dtype the rung does not take)
                    break
                rows += rung_usage(rung, problem, ptx_dir=args.ptx, sass_dir=args.sass)

    table = Table(title="Resource usage per kernel, compiled for sm_90 (sm_90a where a rung needs it; H100 limits: 255 regs/thread, "
                        "64K regs and 228 KiB shared per SM)")
    for col in ("rung", "kernel", "dtype", "D", "threads", "regs", "smem B", "stack B", "spill B",
                "blocks/SM", "warps/SM", "occupancy", "limited by"):
        table.add_column(col, justify="left" if col in ("rung", "kernel", "dtype", "limited by") else "right")
    for u in rows:
        occ = u.occupancy
        table.add_row(u.rung, u.kernel, u.dtype, str(u.head_dim), str(u.threads), str(u.registers),
                      str(u.shared_bytes), str(u.stack_bytes),
                      f"[red]{u.spill_bytes}[/red]" if u.spill_bytes else "0", str(occ.blocks_per_sm),
                      str(occ.warps_per_sm), f"{occ.occupancy:.0%}", occ.limited_by)
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    if skipped:
        print(f"not compiled (dtypes these rungs do not take): {', '.join(skipped)}")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump([{**asdict(u), **asdict(u.occupancy)} for u in rows], f, indent=1)
    for folder, what in ((args.ptx, "PTX"), (args.sass, "SASS")):
        if folder:
            print(f"{what} of {len(rows)} kernels written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
