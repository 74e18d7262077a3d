"""The measured-traffic figure: every rung's device-memory bytes against N, counted in the simulator
(workbench.sim.traffic), beside the FlashAttention-1 paper's Θ-bounds.

    python -m workbench.bench.traffic_figure --out figures/cpu
"""

from __future__ import annotations

import argparse
import sys

from workbench.sim.traffic import fa1_bounds, flash1_shared_elements, sweep  # noqa: F401


def plot(data: dict, path: str) -> str:
    """Three panels against N: device-memory bytes with the FA1 Θ-bounds, the same as a multiple
    of the minimum (Q, K, V read once, O and LSE written once), and shared-memory bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench.bench.plots import _overlap_size, save_figure, style
    from workbench.problem import Problem

    points = data["points"]
    d, m = data["head_dim"], data["M_elements"]
    seqs = sorted({p["problem"]["seq_q"] for p in points})
    rungs = list(dict.fromkeys(p["rung"] for p in points))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))

    def series(rung, key):
        pts = sorted((p for p in points if p["rung"] == rung), key=lambda p: p["problem"]["seq_q"])
        return [p["problem"]["seq_q"] for p in pts], [key(p) for p in pts]

    panels = (
        (axes[0], "device (global) memory: bytes read + written",
         lambda p: p["global_read"] + p["global_written"]),
        (axes[1], "device memory ÷ minimum (Q, K, V read once; O, LSE written once)",
         lambda p: (p["global_read"] + p["global_written"]) / Problem(**p["problem"]).min_bytes()),
        (axes[2], "shared memory: bytes read + written",
         lambda p: p["shared_read"] + p["shared_written"]),
    )
    for ax, title, key in panels:
        for i, rung in enumerate(rungs):
            xs, ys = series(rung, key)
            if not any(ys):
                continue  # naive has no shared memory
            st = style(rung)
            ax.plot(xs, ys, color=st["color"], lw=1.5, label=rung, marker="o",
                    ms=_overlap_size(i, 11.0), mfc="none", mew=1.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(seqs, [str(n) for n in seqs])
        ax.set_xlabel("sequence length N (= Nq = Nkv)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    # The paper's bounds have no constant: each is drawn through the rung that implements it at
    # the largest N, so that the slopes can be compared.
    for bound, anchor, ls in (("standard", "tiled", "--"), ("flash", "flash1", ":")):
        if anchor not in rungs:
            continue
        xs, ys = series(anchor, panels[0][2])
        k = ys[-1] / fa1_bounds(xs[-1], d, m)[bound]
        label = ("FA1 Thm 2: standard Θ(N·d + N²)" if bound == "standard"
                 else f"FA1 Thm 2: FlashAttention Θ(N²·d²/M), M = {m}")
        axes[0].plot(seqs, [k * fa1_bounds(n, d, m)[bound] for n in seqs], ls, color="0.25",
                     lw=1.4, label=f"{label}\n  (scaled to meet {anchor} at N = {xs[-1]})")
    axes[0].set_ylabel("bytes, one head")
    axes[1].set_ylabel("× minimum")
    axes[0].legend(fontsize=7.5, loc="upper left")
    axes[2].legend(fontsize=8, loc="upper left")
    prov = data["provenance"]
    fig.suptitle(f"Memory traffic counted in Numba's CUDA simulator: B = H = 1, D = {d}, "
                 f"{data['dtype']}, each rung at its simulator tiles ({prov['date'][:10]})",
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.sim.traffic",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for traffic.json, .csv and .png")
    parser.add_argument("--seq", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--dim", type=int, default=16, help="head dim (every rung takes 16)")
    parser.add_argument("--kernels", default=None, help="comma-separated rungs (default: all)")
    args = parser.parse_args(argv)

    import csv
    import json
    import os

    from workbench.harness import device

    if not device.simulator():
        print("workbench.sim.traffic counts in the simulator: set NUMBA_ENABLE_CUDASIM=1",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    rungs = args.kernels.split(",") if args.kernels else None
    results = sweep(args.seq, args.dim, rungs,
                    progress=lambda r, n: print(f"counting {r} at N={n}", file=sys.stderr))
    m = flash1_shared_elements(args.dim)
    data = {"provenance": device.provenance(), "what": "bytes read/written per call, counted in the "
            "simulator (B=H=1, float32, each rung at its simulator tiles)", "head_dim": args.dim,
            "dtype": "float32", "M_elements": m, "points": [t.to_dict() for t in results]}
    for p in data["points"]:
        p["fa1_bounds"] = fa1_bounds(p["problem"]["seq_q"], args.dim, m)
    with open(os.path.join(args.out, "traffic.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(args.out, "traffic.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rung", "seq", "head_dim", "config", "global_read_B", "global_written_B",
                    "shared_read_B", "shared_written_B", "fa1_standard_B", "fa1_flash_B"])
        for p in data["points"]:
            w.writerow([p["rung"], p["problem"]["seq_q"], args.dim, json.dumps(p["config"]),
                        p["global_read"], p["global_written"], p["shared_read"],
                        p["shared_written"], p["fa1_bounds"]["standard"],
                        round(p["fa1_bounds"]["flash"])])
    plot(data, os.path.join(args.out, "traffic.png"))
    print(f"{'rung':8} {'N':>5} {'global B':>12} {'shared B':>12}")
    for t in results:
        print(f"{t.rung:8} {t.problem['seq_q']:5} {t.global_bytes:12} {t.shared_bytes:12}")
    return 0


if __name__ == "__main__":
    import workbench  # noqa: F401  (selects the simulator before Numba is imported)

    sys.exit(main())
