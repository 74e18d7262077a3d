"""Device-memory traffic as formulas: what each rung's loops ask device memory for, at any size.

Time on a GPU is set by two budgets: arithmetic (FLOPs) and bytes moved to and from device memory
(HBM). `Problem.flops()` counts the first; this module counts the second, in two ways.

`phases(problem)` is the textbook view of unfused attention, one phase per line of the formula
(S = scale·QKᵀ, P = softmax(S), O = PV), each with its FLOPs and the fewest bytes it could move
(every operand read once, every result written once), so its arithmetic intensity (FLOP per byte)
can be set against the GPU's ridge point. The last row is the fused forward (FlashAttention): the
same FLOPs over Q, K, V, O and LSE alone.

`requested(rung, problem, config)` is what the rung's own loops load and store, element by
element, per array, *before any cache*: every load instruction counted as a trip to device memory.
L1 and L2 serve part of the re-reads on a real GPU (K/V re-reads especially), so measured traffic is
lower; the point is the shape of the counts: which arrays are re-read how many times, and how that
changes from rung to rung. The formulas follow the rungs' docstrings:

- naive: each score thread reads a row of Q and of K (D each), each output thread a row of P and a
  column of V (Nkv each); the softmax reads S three times and writes it once;
- tiled (tile T): Q is read ⌈Nkv/T⌉ times, K ⌈Nq/T⌉ times, P ⌈D/T⌉ times, V ⌈Nq/T⌉ times;
- online (Br, Bc): Q, O, LSE once; K and V once per query block (Tr times); no S;
- flash1 (Br, Bc): K and V once; Q once per KV block (Tc times); O (float32), m and l read Tc − 1
  times and written Tc − 1 times, plus the final O and LSE;
- flash2 (Br, Bc after its cap): Q, O, LSE once; K and V once per query block, but only the KV
  tiles the mask lets a query block see (the kernel's j_start … j_end).

Rows and keys outside the matrices are zero-filled in shared memory, not read, so they are not
counted. At sizes the simulator can run, these formulas equal the bytes counted load by load in the
simulator (`workbench.sim.traffic`; tests/test_traffic_model.py compares them), and they extend
the count to the GPU's sizes, where nothing can be counted that way. GQA: a query head reads its key/value head's K and V, so K/V traffic scales with the
query heads H (L2 catches the repeats inside a group).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.kernels.common import cdiv, kv_tile_range_host
from workbench.problem import Problem

F32 = 4  # bytes of a float32: S, P, the scratch O, m, l, LSE are always float32


@dataclass(frozen=True)
class Phase:
    name: str
    flops: int
    min_bytes: int  # each operand read once, each result written once

    @property
    def intensity(self) -> float:
        """FLOP per byte of device-memory traffic (at best)."""
        return self.flops / self.min_bytes



def phases(problem: Problem) -> list[Phase]:
    """The three phases of unfused attention, and the fused forward, with FLOPs and minimum bytes.

    FLOPs: 2·D per visible (query, key) pair for QKᵀ and again for PV; the softmax counted as 5
    operations per pair (max, subtract, exp, sum, divide)."""
    p = problem
    bh = p.batch * p.heads
    pairs = p.visible_pairs()  # per head
    s = p.itemsize
    q = bh * p.seq_q * p.head_dim * s
    kv = p.batch * p.kv_heads * p.seq_kv * p.head_dim * s  # one of K, V
    scores = bh * p.seq_q * p.seq_kv * F32  # one float32 N² matrix (S, or P written over it)
    lse = bh * p.seq_q * F32
    return [
        Phase("S = scale·QKᵀ", 2 * p.head_dim * pairs * bh, q + kv + scores),
        Phase("P = softmax(S)", 5 * pairs * bh, 2 * scores + lse),
        Phase("O = PV", 2 * p.head_dim * pairs * bh, scores + kv + q),
        Phase("fused (flash)", p.flops(), p.min_bytes()),
    ]


def flash2_tile_ranges(problem: Problem, Br: int, Bc: int) -> list[tuple[int, int]]:
    """(j_start, j_end) of every query block, as flash2's kernel computes them: the KV tiles from
    the block's first row's first key to its last row's last key."""
    p = problem
    left, right = p.mask_bounds()
    shift = p.seq_kv - p.seq_q
    out = []
    for i0 in range(0, p.seq_q, Br):
        i_last = min(i0 + Br, p.seq_q) - 1
        j_start, j_end = kv_tile_range_host(i0, i_last, Bc, shift, left, right, p.seq_kv)
        out.append((j_start, j_end))
    return out


def _rows_in(j_start: int, j_end: int, Bc: int, n: int) -> int:
    """Rows of tiles j_start … j_end − 1 that lie inside a length-n array."""
    return max(0, min(j_end * Bc, n) - j_start * Bc)


def requested(rung, problem: Problem, config: dict | None = None) -> dict:
    """Bytes the rung's kernels load from and store to device memory, per array, with no cache.

    `rung` is a name or a Rung; `config` its tile sizes (default: the rung's DEFAULT_CONFIG, the
    GPU's tiles). Returns {"Q": ..., "K": ..., "V": ..., "S/P": ..., "O": ..., "m, l": ...,
    "LSE": ...} (arrays a rung never touches are 0)."""
    from workbench.kernels import get

    rung = get(rung)
    cfg = {**rung.module.DEFAULT_CONFIG, **(config or {})}
    p = problem
    bh = p.batch * p.heads
    nq, nkv, d, s = p.seq_q, p.seq_kv, p.head_dim, p.itemsize
    row_q, row_kv = d * s, d * s
    out = dict.fromkeys(("Q", "K", "V", "S/P", "O", "m, l", "LSE"), 0)
    out["LSE"] = bh * nq * F32
    if rung.name == "naive":
        pairs = p.visible_pairs()
        out["Q"] = bh * pairs * row_q  # one Q row per visible score
        out["K"] = bh * pairs * row_kv  # one K row per visible score
        out["S/P"] = bh * nq * nkv * F32 * (1 + 3 + 1 + d)  # write S; 3 softmax reads + write P; PV reads P D times
        out["V"] = bh * nq * d * nkv * s  # each O element reads a column of V
        out["O"] = bh * nq * d * s
    elif rung.name == "tiled":
        t = cfg["tile"]
        out["Q"] = bh * nq * row_q * cdiv(nkv, t)
        out["K"] = bh * nkv * row_kv * cdiv(nq, t)
        out["S/P"] = bh * nq * nkv * F32 * (1 + 3 + 1 + cdiv(d, t))
        out["V"] = bh * nkv * row_kv * cdiv(nq, t)
        out["O"] = bh * nq * d * s
    elif rung.name == "online":
        tr = cdiv(nq, cfg["Br"])
        out["Q"] = bh * nq * row_q
        out["K"] = out["V"] = bh * tr * nkv * row_kv
        out["O"] = bh * nq * d * s
    elif rung.name == "flash1":
        tc = cdiv(nkv, cfg["Bc"])
        out["Q"] = bh * tc * nq * row_q
        out["K"] = out["V"] = bh * nkv * row_kv
        out["O"] = bh * nq * d * (2 * (tc - 1) * F32 + s)  # (Tc − 1) writes and reads, then the final O
        out["m, l"] = bh * nq * 2 * F32 * 2 * (tc - 1)
    elif rung.name == "flash2":
        from workbench.kernels import flash2

        Br, Bc = flash2.tiles(p, cfg)[:2]
        rows = sum(_rows_in(js, je, Bc, nkv) for js, je in flash2_tile_ranges(p, Br, Bc))
        out["Q"] = bh * nq * row_q
        out["K"] = out["V"] = bh * rows * row_kv
        out["O"] = bh * nq * d * s
    else:
        raise ValueError(f"no traffic model for rung {rung.name!r}; known: naive, tiled, online, flash1, flash2")
    return out
