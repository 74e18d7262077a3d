"""The seed page's tables as data, and the page checked against itself and against physics.

The page (../shared/seed/flash-attention-benchmarks.md) is a set of claims, not truths. Here each of
its tables is a `Table` whose cells are the page's text, exactly (a test re-reads the page and
compares cell by cell); `Table.num`/`Table.series` turn cells into numbers. What a table's heading
says (GPU, batch, heads, dim, dtype) is in `config`; what it leaves unsaid and we have to assume
for a comparison is in `assumed`, said so.

Units: the page's "MB"/"GB" are binary (its memory table writes "2048 MB (2 GB)" and
"32768 MB (32 GB)", and 8 MB is exactly 512²·32 bytes = 8 MiB), so MB is read as MiB and GB as GiB.

Then the checks: each `check_*` function computes something from the page's own numbers (and, where
said, from hardware or model facts listed below) and returns a one-paragraph finding with the
computation in it. `findings()` runs them all. `claims_for(suite)` gives the rows a suite can put
beside its measurements: (seq, what, claimed value, unit) plus which of our kernels/peers each
claim is compared with.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------------------
# Facts that are not on the page (vendor datasheets, model cards), used by the physics checks.
# --------------------------------------------------------------------------------------------------
PEAK_TFLOPS = {  # dense tensor-core peaks, TFLOP/s (NVIDIA datasheets, SXM parts)
    ("A100", "float16"): 312.0,
    ("H100", "float16"): 989.0,
    ("H100", "fp8"): 1979.0,
}
PEAK_GBPS = {"A100": 2039.0, "H100": 3350.0}  # HBM bandwidth, GB/s (A100 80GB SXM, H100 SXM)
GPU_MEMORY_GiB = {"A100": 80, "H100": 80, "A10G": 24}
LLAMA2_7B = dict(params=6.74e9, layers=32, d_model=4096, heads=32, head_dim=128)
LLAMA2_PARAMS = {"Llama 2 7B": 6.74e9, "Llama 2 13B": 13.0e9, "Llama 2 70B": 69.0e9}
GPT_D_MODEL = {"GPT-2 (124M)": 768, "GPT-J (6B)": 4096, "GPT-NeoX (20B)": 6144}

MiB = 2**20
GiB = 2**30

# Which of our measurements a page column is compared with (the mapping).
KERNELS_FOR = {
    "Standard": ("naive", "torch-standard"),
    "Flash Attn 2": ("flash2", "sdpa-flash"),
    "Flash Attn": ("flash2", "sdpa-flash"),
    "Flash Attention 2": ("flash2", "sdpa-flash"),
    "Flash Attn 3": ("sdpa-cudnn",),
    "Flash Attn 3 (FP16)": ("sdpa-cudnn",),
    "Flash Attn 3 (FP8)": (),  # nothing of ours runs FP8
    "FA1": ("flash1",),
    "FA2": ("flash2", "sdpa-flash"),
    "FA3 (FP16)": ("sdpa-cudnn",),
    "FA3 (FP8)": (),
}


# --------------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    key: str
    title: str  # the page's heading(s) over the table
    gpu: str | None  # as the page names it; None where the page does not say
    config: dict  # what the page says about the problem
    columns: tuple
    rows: tuple  # tuples of cells, each exactly the page's text
    assumed: dict = field(default_factory=dict)  # what the page leaves unsaid, assumed here
    transposed: bool = False  # sequence lengths run along the header (the per-token tables)

    def column(self, name: str) -> tuple:
        i = self.columns.index(name)
        return tuple(r[i] for r in self.rows)

    def row(self, label) -> dict:
        """The row whose first cell is `label` (text, or a sequence length such as 2048 for "2K")."""
        for r in self.rows:
            if r[0] == label or (isinstance(label, int) and seq_value(r[0]) == label):
                return dict(zip(self.columns, r))
        raise KeyError(f"{self.key}: no row {label!r}")

    def cell(self, label, column: str) -> str:
        return self.row(label)[column]

    def num(self, label, column: str) -> float | None:
        return number(self.cell(label, column))

    def seqs(self) -> tuple:
        if self.transposed:
            return tuple(seq_value(c) for c in self.columns[1:])
        return tuple(seq_value(r[0]) for r in self.rows)

    def series(self, name: str, convert=None) -> list:
        """[(seq, value)] for a column (or, in a transposed table, a row); None where the page has
        no number (N/A, OOM)."""
        convert = convert or number
        if self.transposed:
            r = self.row(name)
            return [(seq_value(c), convert(r[c])) for c in self.columns[1:]]
        return [(seq_value(r[0]), convert(c)) for r, c in zip(self.rows, self.column(name))]


def seq_value(text: str) -> int | None:
    """'512' -> 512, '2K' -> 2048, '16K' -> 16384; None if the cell is not a length."""
    m = re.fullmatch(r"\s*(\d+)\s*([Kk]?)\s*", str(text))
    if not m:
        return None
    return int(m.group(1)) * (1024 if m.group(2) else 1)


def number(cell) -> float | None:
    """The number a cell starts with ('1.3x' -> 1.3, '35%' -> 35, '26.3 GB (OOM)' -> 26.3, '2K' ->
    2048); None when it starts with words ('N/A', 'OOM', 'OOM (>40GB)', 'Enabled')."""
    if isinstance(cell, (int, float)):
        return float(cell)
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*([Kk](?![Bb]))?", str(cell))
    if not m:
        return None
    return float(m.group(1)) * (1024 if m.group(2) else 1)


def mib(cell) -> float | None:
    """A memory cell in MiB: '8 MB' -> 8, '2.5 GB' -> 2560, '2048 MB (2 GB)' -> 2048 (the first
    unit counts; the page's MB/GB are binary, see the module docstring)."""
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*(MB|GB)", str(cell))
    if not m:
        return None
    return float(m.group(1)) * (1024 if m.group(2) == "GB" else 1)


SPEED_CFG = dict(batch=8, heads=32, head_dim=64, unit="ms", what="forward pass time")
FP16_ASSUMED = {"dtype": "float16 (FlashAttention runs only in fp16/bf16; the page does not say)",
                "causal": False}

TABLES = {t.key: t for t in (
    Table("a100-speed",
          "Speed comparisons across GPUs / A100 80GB (Ampere) / Forward pass time (milliseconds, "
          "batch=8, heads=32, dim=64)",
          "A100 80GB", SPEED_CFG,
          ("Seq Length", "Standard", "Flash Attn 2", "Flash Attn 3", "Speedup (FA2)"),
          (("512", "1.2", "0.9", "N/A", "1.3x"),
           ("1024", "3.8", "1.4", "N/A", "2.7x"),
           ("2048", "14.2", "4.8", "N/A", "3.0x"),
           ("4096", "55.1", "17.3", "N/A", "3.2x"),
           ("8192", "218.5", "66.2", "N/A", "3.3x")),
          FP16_ASSUMED),
    Table("h100-speed",
          "H100 80GB (Hopper) / Forward pass time (milliseconds, same config)",
          "H100 80GB", SPEED_CFG,
          ("Seq Length", "Standard", "Flash Attn 2", "Flash Attn 3 (FP16)", "Flash Attn 3 (FP8)",
           "Best Speedup"),
          (("512", "0.8", "0.6", "0.4", "0.3", "2.7x"),
           ("1024", "2.6", "1.0", "0.6", "0.4", "6.5x"),
           ("2048", "9.8", "3.4", "2.0", "1.3", "7.5x"),
           ("4096", "38.2", "12.5", "7.2", "4.8", "8.0x"),
           ("8192", "151.4", "47.8", "27.1", "18.2", "8.3x")),
          FP16_ASSUMED),
    Table("a10g-speed",
          "A10G 24GB (Ampere) / Forward pass time (milliseconds, batch=4)",
          "A10G 24GB", dict(batch=4, unit="ms", what="forward pass time"),
          ("Seq Length", "Standard", "Flash Attn 2", "Speedup"),
          (("512", "2.1", "1.6", "1.3x"),
           ("1024", "6.8", "2.8", "2.4x"),
           ("2048", "25.9", "9.4", "2.8x"),
           ("4096", "102.1", "35.2", "2.9x")),
          {"heads": 32, "head_dim": 64, **FP16_ASSUMED}),
    Table("memory-standard",
          "Memory usage analysis / GPU memory consumption (batch=8, heads=32, dim=64) / "
          "Standard attention memory",
          None, dict(batch=8, heads=32, head_dim=64, unit="MB"),
          ("Seq Length", "Attention Matrix", "KV Cache", "Total", "Notes"),
          (("512", "8 MB", "32 MB", "40 MB", "Manageable"),
           ("2048", "128 MB", "128 MB", "256 MB", "Growing"),
           ("8192", "2048 MB (2 GB)", "512 MB", "2.5 GB", "Large"),
           ("32768", "32768 MB (32 GB)", "2048 MB", "34 GB", "OOM on 24GB GPUs")),
          {"dtype": "float16 (the KV Cache column matches fp16 exactly)"}),
    Table("memory-flash2",
          "Memory usage analysis / GPU memory consumption (batch=8, heads=32, dim=64) / "
          "Flash Attention 2 memory",
          None, dict(batch=8, heads=32, head_dim=64, unit="MB"),
          ("Seq Length", "Attention (on-chip)", "KV Cache", "Total", "Reduction"),
          (("512", "0 MB (recomputed)", "32 MB", "32 MB", "20%"),
           ("2048", "0 MB", "128 MB", "128 MB", "50%"),
           ("8192", "0 MB", "512 MB", "512 MB", "80%"),
           ("32768", "0 MB", "2048 MB", "2 GB", "94%")),
          {"dtype": "float16 (the KV Cache column matches fp16 exactly)"}),
    Table("llama2-7b-memory",
          "Memory scaling comparison / Llama 2 7B model memory (float16, batch=1)",
          None, dict(model="Llama 2 7B", dtype="float16", batch=1, unit="GB"),
          ("Context Length", "Standard Attention", "Flash Attention 2", "Can Fit 24GB GPU?"),
          (("2K", "3.2 GB", "2.1 GB", "Both: Yes"),
           ("4K", "5.8 GB", "2.8 GB", "Both: Yes"),
           ("8K", "12.1 GB", "4.2 GB", "Both: Yes"),
           ("16K", "26.3 GB (OOM)", "7.8 GB", "Only Flash: Yes"),
           ("32K", "OOM", "14.2 GB", "Only Flash: Yes")),
          {"heads": 32, "head_dim": 128,
           "shape": "Llama-2-7B's attention (32 heads of D=128); compared as one attention layer"}),
    Table("training-memory",
          "Training memory (Llama 2 7B, batch=4)",
          None, dict(model="Llama 2 7B", batch=4, unit="GB"),
          ("Context", "Standard (GB)", "Flash Attn (GB)", "Reduction"),
          (("2K", "18.2", "12.4", "32%"),
           ("4K", "34.8", "16.8", "52%"),
           ("8K", "OOM (>40GB)", "26.2", "Fits!"))),
    Table("per-token-time",
          "Scaling with sequence length / Empirical scaling (A100, batch=1, heads=32, dim=64) / "
          "Time per token (milliseconds)",
          "A100", dict(batch=1, heads=32, head_dim=64, unit="ms/token"),
          ("Sequence", "512", "1K", "2K", "4K", "8K", "16K"),
          (("Standard", "0.15", "0.37", "1.11", "3.44", "13.4", "52.8"),
           ("Flash Attn 2", "0.11", "0.14", "0.24", "0.43", "0.83", "1.64"),
           ("Speedup", "1.4x", "2.6x", "4.6x", "8.0x", "16.1x", "32.2x")),
          FP16_ASSUMED, transposed=True),
    Table("per-token-memory",
          "Empirical scaling (A100, batch=1, heads=32, dim=64) / Memory per token (MB)",
          "A100", dict(batch=1, heads=32, head_dim=64, unit="MB/token"),
          ("Sequence", "512", "1K", "2K", "4K", "8K", "16K"),
          (("Standard", "0.08", "0.13", "0.25", "0.64", "2.05", "8.13"),
           ("Flash Attn 2", "0.06", "0.06", "0.06", "0.06", "0.06", "0.06")),
          FP16_ASSUMED, transposed=True),
    Table("training-throughput",
          "Training vs inference performance / Training (forward + backward, Llama 2 7B, A100)",
          "A100", dict(model="Llama 2 7B", unit="samples/sec"),
          ("Batch × Seq", "Standard (samples/sec)", "Flash Attn (samples/sec)", "Speedup"),
          (("4 × 2K", "1.2", "3.1", "2.6x"),
           ("8 × 2K", "2.1", "5.8", "2.8x"),
           ("4 × 4K", "0.4", "1.3", "3.3x"),
           ("8 × 4K", "OOM", "2.4", "Enabled"),
           ("2 × 8K", "0.1", "0.4", "4.0x"))),
    Table("inference-throughput",
          "Inference (generation, Llama 2 7B, A100)",
          "A100", dict(model="Llama 2 7B", unit="tokens/sec"),
          ("Context Length", "Standard (tokens/sec)", "Flash Attn (tokens/sec)", "Speedup"),
          (("512", "48", "52", "1.1x"),
           ("2K", "42", "62", "1.5x"),
           ("4K", "31", "58", "1.9x"),
           ("8K", "18", "51", "2.8x"),
           ("16K", "OOM", "42", "Enabled")),
          {"batch": "1 (the page does not say)"}),
    Table("versions",
          "Flash Attention versions comparison / Flash Attention 1 vs 2 vs 3 (H100, seq=4096, batch=8)",
          "H100", dict(seq=4096, batch=8),
          ("Metric", "FA1", "FA2", "FA3 (FP16)", "FA3 (FP8)"),
          (("Forward time (ms)", "28.4", "12.5", "7.2", "4.8"),
           ("Memory (GB)", "4.8", "4.2", "4.2", "2.8"),
           ("TFLOPS", "180", "420", "740", "1150"),
           ("GPU util %", "35%", "55%", "75%", "82%")),
          {"heads": 32, "head_dim": 64, "causal": False,
           "why": "FA2/FA3 times equal the H100 speed table's 4096 row (12.5, 7.2, 4.8 ms), whose "
                  "config is heads=32, dim=64"}),
    Table("features",
          "Features by version",
          None, {},
          ("Feature", "FA1", "FA2", "FA3"),
          (("Basic attention", "✅", "✅", "✅"),
           ("Causal masking", "✅", "✅", "✅"),
           ("Multi-query attention", "❌", "✅", "✅"),
           ("Sliding window", "❌", "✅", "✅"),
           ("Paged KV cache", "❌", "✅", "✅"),
           ("FP8 support", "❌", "❌", "✅ (H100 only)"),
           ("Work partitioning", "Basic", "Advanced", "Optimal"))),
    Table("llama2-models",
          "Real-world model benchmarks / Llama 2 models (A100 80GB, batch=4, seq=2048)",
          "A100 80GB", dict(batch=4, seq=2048, unit="samples/sec"),
          ("Model", "Params", "Standard (samples/sec)", "Flash Attn (samples/sec)", "Speedup"),
          (("Llama 2 7B", "7B", "1.2", "3.1", "2.6x"),
           ("Llama 2 13B", "13B", "0.6", "1.7", "2.8x"),
           ("Llama 2 70B", "70B", "0.12", "0.34", "2.8x"))),
    Table("gpt-models",
          "GPT-style models (seq=1024)",
          None, dict(seq=1024, unit="tokens/sec"),
          ("Model", "Standard (tokens/sec)", "Flash Attn (tokens/sec)", "Speedup"),
          (("GPT-2 (124M)", "520", "680", "1.3x"),
           ("GPT-J (6B)", "42", "98", "2.3x"),
           ("GPT-NeoX (20B)", "8", "22", "2.75x"))),
)}

# The page's statements outside the tables, verbatim.
STATEMENTS = {
    "h100-key-insight": "Flash Attention 3 on H100 with FP8 achieves ~1.2 PFLOPS (75% of theoretical max).",
    "memory-key-insight": "Flash Attention doesn't materialize attention matrix, saving O(N²) memory.",
    "complexity": "Standard attention: Time O(N² × d), Memory O(N² + N × d); Flash Attention: Time "
                  "O(N² × d) (same, but with better constants), Memory O(N × d) (linear!)",
    "speedup-quadratic": "Observation: Speedup increases quadratically with sequence length!",
    "memory-constant": "Observation: Flash Attention memory per token is constant!",
    "inference-note": "Note: Inference speedup less dramatic than training because generation is "
                      "memory-bound (KV cache accesses).",
    "fa2-vs-fa1": "FA2: 2.3x faster than FA1 (better parallelism)",
    "fa3-vs-fa2": "FA3 (FP16): 1.7x faster than FA2 (H100 async optimizations)",
    "fa3fp8-vs-fa2": "FA3 (FP8): 2.6x faster than FA2 (low precision)",
    "recommend-training": "Training large models (>7B parameters): ... Expected: 2.5-3x speedup",
    "recommend-long-context": "Long context inference (>4K tokens): ... Expected: 2-4x speedup, 5-10x "
                              "memory reduction",
    "recommend-short": "Short sequences (<512 tokens): ... Flash Attention provides 1.2-1.5x speedup",
    "recommend-serving": "Multi-user serving: ... Can serve 2-3x more users on same hardware",
}


def table(key: str) -> Table:
    return TABLES[key]


# --------------------------------------------------------------------------------------------------
# Arithmetic helpers (public: the tests and the findings use them)
# --------------------------------------------------------------------------------------------------
def attention_flops(batch, heads, seq, head_dim, causal=False) -> float:
    """Forward FLOPs of the page's shape, counted by Problem.flops (4·D per visible pair)."""
    from workbench.problem import Problem

    return float(Problem(batch, heads, heads, seq, seq, head_dim, causal=causal).flops())


def tflops(flops, ms) -> float:
    return flops / (ms * 1e-3) / 1e12


def fit_exponent(xs, ys) -> float:
    """Least-squares slope of log y against log x: y ∝ x^slope."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def score_matrix_bytes(batch, heads, seq_q, seq_kv, itemsize) -> int:
    """One N×N score (or probability) matrix for every (batch, head)."""
    return batch * heads * seq_q * seq_kv * itemsize


def qkvo_bytes(batch, heads, seq, head_dim, itemsize) -> int:
    return 4 * batch * heads * seq * head_dim * itemsize


def kv_bytes(batch, heads, seq, head_dim, itemsize) -> int:
    return 2 * batch * heads * seq * head_dim * itemsize


def per_token_speedups() -> list:
    """[(seq, Standard/FA2 from the per-token times, the page's Speedup row)]."""
    t = TABLES["per-token-time"]
    std, fa, sp = (dict(t.series(r)) for r in ("Standard", "Flash Attn 2", "Speedup"))
    return [(n, std[n] / fa[n], sp[n]) for n in t.seqs()]


def versions_tflops() -> dict:
    """{column: (TFLOP/s from the page's forward time, the page's TFLOPS)} at B=8 H=32 N=4096 D=64."""
    t = TABLES["versions"]
    f = attention_flops(8, 32, 4096, 64)
    return {c: (tflops(f, t.num("Forward time (ms)", c)), t.num("TFLOPS", c)) for c in t.columns[1:]}


def memory_table_bytes_per_pair() -> list:
    """[(seq, bytes per (query, key) pair the page's Attention Matrix implies)]."""
    return [(n, v * MiB / (n * n)) for n, v in TABLES["memory-standard"].series("Attention Matrix", mib)]


def shapes_for_bytes_per_pair(bpp: float) -> list:
    """(batch, heads, dtype) with batch·heads·itemsize = bpp, batch in {1,2,4,8}, heads in 1..32."""
    out = []
    for dtype, size in (("fp8", 1), ("float16", 2), ("float32", 4)):
        for b in (1, 2, 4, 8):
            for h in (1, 2, 4, 8, 16, 32):
                if b * h * size == bpp:
                    out.append((b, h, dtype))
    return out


# --------------------------------------------------------------------------------------------------
# The checks. Each returns one finding: a verdict word, then the computation.
# --------------------------------------------------------------------------------------------------
def _x(vals, fmt="{:.2f}"):
    return ", ".join(fmt.format(v) for v in vals)


def check_speedup_growth() -> str:
    """(a) "Speedup increases quadratically with sequence length" vs the per-token table itself."""
    rows = per_token_speedups()
    seqs = [n for n, _, _ in rows]
    ratios = [r for _, r, _ in rows]
    k = fit_exponent(seqs, ratios)
    steps = [b / a for a, b in zip(ratios, ratios[1:])]
    t = TABLES["per-token-time"]
    k_std = fit_exponent(seqs, [v for _, v in t.series("Standard")])
    k_fa = fit_exponent(seqs, [v for _, v in t.series("Flash Attn 2")])
    return (f"CONTRADICTION (per-token table, A100 B=1 H=32 D=64): the page says the speedup grows "
            f"quadratically, but its own Standard/FA2 ratios ({_x(ratios)} at seq "
            f"{_x(seqs, '{:d}')}) fit speedup ∝ N^{k:.2f}: ×{_x(steps)} per doubling, where "
            f"quadratic would be ×4. Linear, not quadratic (the page's Speedup row matches the "
            f"ratios). The per-token times themselves fit Standard ∝ N^{k_std:.2f}, FA2 ∝ "
            f"N^{k_fa:.2f}: FA2's per-token time grows ∝ N (total ∝ N², as O(N²·d) compute says), "
            f"Standard's ∝ N^{k_std:.1f} (total ∝ N^{k_std + 1:.1f}), which no O(N²) algorithm does.")


def check_per_token_time_physics() -> str:
    """The per-token times against the A100's peak and against the page's own A100 speed table."""
    t = TABLES["per-token-time"]
    n = 16384
    fa = t.num("Flash Attn 2", "16K")
    f = attention_flops(1, 32, n, 64)
    total_s = fa * n / 1e3
    as_per_token = f / total_s / 1e12
    as_total = tflops(f, fa)
    peak = PEAK_TFLOPS[("A100", "float16")]
    speed = TABLES["a100-speed"]
    rate = tflops(attention_flops(8, 32, 8192, 64), speed.num(8192, "Flash Attn 2"))
    expect_ms = f / (rate * 1e12) * 1e3
    std4k = speed.num(4096, "Standard") / speed.num(4096, "Flash Attn 2")
    return (f"IMPOSSIBLE (per-token time, A100 B=1 H=32 D=64): at 16K the forward is 4·1·32·16384²·64 "
            f"= {f:.2e} FLOP. Read as per token, FA2's {fa} ms/token is {fa} ms × 16384 = "
            f"{total_s:.1f} s for the call = {as_per_token:.3f} TFLOP/s ({peak / as_per_token:.0f}× "
            f"below the A100's {peak:.0f}); read as the whole call, {fa} ms is {as_total:.0f} TFLOP/s, "
            f"{as_total / peak:.1f}× above the peak. The page's own A100 speed table (FA2, B=8, seq "
            f"8192: {rate:.1f} TFLOP/s) predicts {expect_ms:.1f} ms for this call = "
            f"{expect_ms / n * 1e3:.2f} µs per token. And the same GPU and shape but B=1 gives an 8.0× "
            f"speedup at 4K here against {std4k:.1f}× at B=8 in the speed table.")


def check_per_token_memory() -> str:
    """(d) Memory per token: FA2's constant 0.06 MB vs Q, K, V, O; Standard's growth vs N²."""
    t = TABLES["per-token-memory"]
    fa = t.num("Flash Attn 2", "512")
    fp16 = qkvo_bytes(1, 32, 1, 64, 2) / MiB
    fp32 = qkvo_bytes(1, 32, 1, 64, 4) / MiB
    kv_page = kv_bytes(8, 32, 512, 64, 2) / (8 * 512) / MiB  # the memory table's FA2 per token
    seqs = t.seqs()
    std = [v for _, v in t.series("Standard")]
    extra = [s - fa for s in std]
    k = fit_exponent(seqs, extra)
    s16 = std[-1]
    total16 = s16 * 16384 / 1024
    score16 = score_matrix_bytes(1, 32, 1, 16384, 2) / MiB  # one query row of S, all heads, fp16
    return (f"INCONSISTENT (per-token memory, A100 B=1 H=32 D=64): constant per token is right for "
            f"O(N) memory, but the value is not: Q, K, V, O per token are 4·32·64 elements = "
            f"{fp16:.4f} MiB in fp16 ({fp32:.4f} MiB in fp32; the LSE adds 128 B), so 0.06 MB is "
            f"{fa / fp16:.1f}× the fp16 inputs+output ({fa / fp32:.1f}× fp32), and the page's own "
            f"memory table implies {kv_page:.4f} MiB per token (its FA2 total is K and V only). "
            f"Standard minus FA2 per token ({_x(extra)} MB) grows ∝ N^{k:.2f}; a materialised N×N "
            f"matrix gives ∝ N^1 per token (one fp16 row of S over 32 heads is {score16:.2f} MiB at "
            f"16K). At 16K the page's {s16} MB/token × 16384 = {total16:.0f} GiB, more than the A100's "
            f"80 GB, yet the time table has a Standard number there.")


def check_memory_table() -> str:
    """(b) The standard-vs-FA2 memory tables at B=8, H=32, D=64."""
    bpp = memory_table_bytes_per_pair()
    per = sorted({round(b, 6) for _, b in bpp})
    real = score_matrix_bytes(8, 32, 512, 512, 2)
    shapes = shapes_for_bytes_per_pair(per[0]) if len(per) == 1 else []
    kv_ok = all(abs(v * MiB - kv_bytes(8, 32, n, 64, 2)) < 1
                for n, v in TABLES["memory-standard"].series("KV Cache", mib))
    real_red = []
    for n in TABLES["memory-standard"].seqs():
        io = qkvo_bytes(8, 32, n, 64, 2) + 8 * 32 * n * 4
        std = score_matrix_bytes(8, 32, n, n, 2) + qkvo_bytes(8, 32, n, 64, 2)
        real_red.append((n, score_matrix_bytes(8, 32, n, n, 2) / GiB, 1 - io / std))
    page_red = [v for _, v in TABLES["memory-flash2"].series("Reduction")]
    return (f"CONTRADICTION (memory table, B=8 H=32 D=64): every Attention Matrix cell is N²·"
            f"{per[0]:.0f} bytes ({_x([b for _, b in bpp], '{:.0f}')} B per query-key pair), but one "
            f"fp16 score matrix at B=8, H=32 is 8·32·512²·2 B = {real / MiB:.0f} MiB at 512, not 8 MB: "
            f"the page is {real / MiB / 8:.0f}× low ({2 * real / MiB / 8:.0f}× for fp32). "
            f"{per[0]:.0f} B/pair means batch·heads·bytes = {per[0]:.0f}, e.g. (B, H, dtype) in "
            f"{shapes}: not the stated B=8, H=32. The KV Cache column {'is' if kv_ok else 'is NOT'} "
            f"exactly 2·B·H·N·D·2 B = 2·8·32·N·64·2 (32 MiB at 512): fp16 at B=8 H=32, so the two "
            f"columns assume different shapes. FA2's total counts K and V only; Q and O are as large "
            f"again (a forward has no KV cache to speak of). With one fp16 S ("
            f"{_x([s for _, s, _ in real_red], '{:g}')} GiB at seq {_x(TABLES['memory-standard'].seqs(), '{:d}')}"
            f") plus Q, K, V, O the reduction is {_x([100 * r for _, _, r in real_red], '{:.1f}')}%, "
            f"not the page's {_x(page_red, '{:.0f}')}%; and at 8192 S alone (32 GiB) is already OOM on "
            f"a 24 GB GPU, at 32768 (512 GiB) on every GPU.")


def check_memory_totals() -> str:
    """The memory tables' own sums and reductions (the arithmetic inside the page)."""
    s, f = TABLES["memory-standard"], TABLES["memory-flash2"]
    lines = []
    ok = True
    for n in s.seqs():
        a, kv, tot = (mib(s.cell(n, c)) for c in ("Attention Matrix", "KV Cache", "Total"))
        red = 1 - mib(f.cell(n, "Total")) / tot
        ok &= abs(a + kv - tot) < 1 and abs(100 * red - f.num(n, "Reduction")) < 0.6
        lines.append(f"{n}: {a:g}+{kv:g} = {a + kv:g} MiB (page {s.cell(n, 'Total')}), "
                     f"1−{mib(f.cell(n, 'Total')):g}/{tot:g} = {100 * red:.1f}%")
    return (f"{'CONSISTENT' if ok else 'INCONSISTENT'} (memory tables' own arithmetic, reading MB/GB "
            f"as MiB/GiB): " + "; ".join(lines) + ". The sums are right; the inputs are not (above).")


def check_versions_tflops() -> str:
    """(c) FA1/FA2/FA3 TFLOPS against the same table's forward times."""
    f = attention_flops(8, 32, 4096, 64)
    v = versions_tflops()
    t = TABLES["versions"]
    implied = {c: page * 1e12 * t.num("Forward time (ms)", c) * 1e-3 for c, (_, page) in v.items()}
    parts = [f"{c}: {f:.3g}/{t.num('Forward time (ms)', c)} ms = {ours:.1f} (page {page:.0f}, "
             f"{page / ours:.1f}×)" for c, (ours, page) in v.items()]
    return (f"CONTRADICTION (versions table, H100 B=8 N=4096, H=32 D=64 as the speed table): the "
            f"forward is 4·B·H·N²·D = 4·8·32·4096²·64 = {f:.3e} FLOP (2^40), so TFLOP/s = " +
            "; ".join(parts) + f". The page's TFLOPS × its own times imply "
            f"{_x([x / 1e12 for x in implied.values()], '{:.2f}')} ×10¹² FLOP per call, "
            f"{min(implied.values()) / f:.1f}–{max(implied.values()) / f:.1f}× the real count: the "
            f"TFLOPS row and the time row cannot both be true for this shape.")


def check_versions_util() -> str:
    """(c) "GPU util %" against TFLOPS and the H100's peaks."""
    t = TABLES["versions"]
    v = versions_tflops()
    parts = []
    for c, (ours, page) in v.items():
        peak = PEAK_TFLOPS[("H100", "fp8" if "FP8" in c else "float16")]
        util = t.num("GPU util %", c)
        parts.append(f"{c}: page {page:.0f}/{peak:.0f} = {100 * page / peak:.1f}%, from the time "
                     f"{100 * ours / peak:.1f}%, page says {util:.0f}% (implied peak {page / util * 100:.0f})")
    return ("INCONSISTENT (versions table, GPU util %): against the H100's dense peaks (fp16 989, fp8 "
            "1979 TFLOP/s): " + "; ".join(parts) + ". Only FA3 (FP16)'s page TFLOPS matches its "
            "util %; the four implied peaks all differ.")


def check_fp8_key_insight() -> str:
    """'FA3 FP8 achieves ~1.2 PFLOPS (75% of theoretical max)' vs the page's tables."""
    peak8 = PEAK_TFLOPS[("H100", "fp8")]
    h = TABLES["h100-speed"]
    best = max(tflops(attention_flops(8, 32, n, 64), ms) for n, ms in h.series("Flash Attn 3 (FP8)"))
    v = TABLES["versions"]
    return (f"CONTRADICTION (H100 key insight): 1.2 PFLOPS at 75% implies a peak of 1.2/0.75 = 1.6 "
            f"PFLOP/s, which is neither the H100's dense FP8 ({peak8:.0f} TFLOP/s, of which 1.2 PFLOP/s "
            f"is {120000 / peak8:.0f}%) nor dense FP16 (989). The versions table says "
            f"{v.cell('TFLOPS', 'FA3 (FP8)')} TFLOPS at {v.cell('GPU util %', 'FA3 (FP8)')}; and the H100 "
            f"speed table's FP8 times give at most {best:.0f} TFLOP/s (4·8·32·N²·64 FLOP over the page's "
            f"ms, best at 8192), {1200 / best:.1f}× below the claim.")


def check_versions_memory() -> str:
    t = TABLES["versions"]
    fp16 = (qkvo_bytes(8, 32, 4096, 64, 2) + 8 * 32 * 4096 * 4) / GiB
    fp8 = (3 * 8 * 32 * 4096 * 64 * 1 + 8 * 32 * 4096 * 64 * 2 + 8 * 32 * 4096 * 4) / GiB
    ml = 2 * 8 * 32 * 4096 * 4 / MiB
    kv = kv_bytes(8, 32, 4096, 64, 2) / MiB
    return (f"IMPLAUSIBLE (versions table, Memory (GB)): at B=8 H=32 N=4096 D=64 the call's own arrays "
            f"are Q, K, V, O in fp16 + the fp32 LSE = {fp16:.3f} GiB; FP8 Q, K, V with an fp16 O = "
            f"{fp8:.3f} GiB. The page says {t.cell('Memory (GB)', 'FA2')} GB for FA2 "
            f"({float(t.cell('Memory (GB)', 'FA2')) / fp16:.1f}×) and {t.cell('Memory (GB)', 'FA1')} GB "
            f"for FA1, whose extra state (m and l, fp32) is {ml:.0f} MiB, not 0.6 GB. The page's own "
            f"memory table would put FA2 at seq 4096 at {kv:.0f} MiB (its K+V).")


def check_versions_speedups() -> str:
    t = TABLES["versions"]
    ms = {c: t.num("Forward time (ms)", c) for c in t.columns[1:]}
    a, b, c = ms["FA1"] / ms["FA2"], ms["FA2"] / ms["FA3 (FP16)"], ms["FA2"] / ms["FA3 (FP8)"]
    h = TABLES["h100-speed"]
    same = (h.num(4096, "Flash Attn 2"), h.num(4096, "Flash Attn 3 (FP16)"),
            h.num(4096, "Flash Attn 3 (FP8)")) == (ms["FA2"], ms["FA3 (FP16)"], ms["FA3 (FP8)"])
    return (f"CONSISTENT (versions 'key improvements'): {ms['FA1']}/{ms['FA2']} = {a:.2f} (page 2.3x), "
            f"{ms['FA2']}/{ms['FA3 (FP16)']} = {b:.2f} (1.7x), {ms['FA2']}/{ms['FA3 (FP8)']} = {c:.2f} "
            f"(2.6x); the FA2/FA3 times {'equal' if same else 'differ from'} the H100 speed table's "
            f"4096 row.")


def check_speed_tables() -> str:
    """(e) The speedup columns against the time columns, and the times against physics."""
    out = []
    for key, col in (("a100-speed", "Speedup (FA2)"), ("a10g-speed", "Speedup")):
        t = TABLES[key]
        calc = [t.num(n, "Standard") / t.num(n, "Flash Attn 2") for n in t.seqs()]
        page = [t.num(n, col) for n in t.seqs()]
        ok = all(abs(a - b) <= 0.051 for a, b in zip(calc, page))
        out.append(f"{key}: Standard/FA2 = {_x(calc)} vs page {_x(page, '{:g}')} "
                   f"({'consistent' if ok else 'INCONSISTENT'})")
    h = TABLES["h100-speed"]
    best = [h.num(n, "Standard") / min(h.num(n, c) for c in h.columns[2:5]) for n in h.seqs()]
    fa2 = [h.num(n, "Standard") / h.num(n, "Flash Attn 2") for n in h.seqs()]
    page = [h.num(n, "Best Speedup") for n in h.seqs()]
    ok = all(abs(a - b) <= 0.051 for a, b in zip(best, page))
    out.append(f"h100-speed: Best Speedup = Standard/FA3(FP8) = {_x(best)} vs page {_x(page, '{:g}')} "
               f"({'consistent' if ok else 'INCONSISTENT'}), but that divides an fp16 time by an fp8 "
               f"one; the like-for-like FA2 speedup is {_x(fa2)}")
    f8 = attention_flops(8, 32, 8192, 64)
    a100 = tflops(f8, TABLES["a100-speed"].num(8192, "Flash Attn 2"))
    h100 = tflops(f8, h.num(8192, "Flash Attn 2"))
    h100_3 = tflops(f8, h.num(8192, "Flash Attn 3 (FP16)"))
    traffic = 8 * 8 * 32 * 8192 * 8192  # write S, read S, write P, read P, fp16
    out.append(f"at 8192 ({f8:.2e} FLOP) FA2 runs {a100:.0f} TFLOP/s on the A100 "
               f"({100 * a100 / PEAK_TFLOPS[('A100', 'float16')]:.0f}% of 312) and {h100:.0f} on the "
               f"H100 ({100 * h100 / 989:.0f}% of 989; FA3 FP16 {h100_3:.0f}); Standard moves ≥ 8 B per "
               f"score (S and P written and read in fp16) = {traffic / 1e9:.0f} GB, ≥ "
               f"{traffic / PEAK_GBPS['A100'] / 1e6:.0f} ms on the A100 and "
               f"{traffic / PEAK_GBPS['H100'] / 1e6:.0f} ms on the H100, under the page's "
               f"{TABLES['a100-speed'].cell('8192', 'Standard')} and {h.cell('8192', 'Standard')} ms "
               f"(plausible); time ×{TABLES['a100-speed'].num(8192, 'Standard') / TABLES['a100-speed'].num(4096, 'Standard'):.2f} "
               f"from 4096 to 8192 (N² predicts ×4)")
    return "MOSTLY CONSISTENT (speed tables): " + "; ".join(out) + "."


def check_llama_memory() -> str:
    t = TABLES["llama2-7b-memory"]
    p, L, d = LLAMA2_7B["params"], LLAMA2_7B["layers"], LLAMA2_7B["d_model"]
    weights = p * 2 / GiB
    kv = {n: 2 * L * d * n * 2 / GiB for n in t.seqs()}
    s_layer = {n: score_matrix_bytes(1, 32, n, n, 2) / GiB for n in t.seqs()}
    std = [(n, v) for n, v in t.series("Standard Attention")]
    fa = [v for _, v in t.series("Flash Attention 2")]
    diffs = [s - f for (n, s), f in zip(std, fa) if s is not None]
    steps = [b / a for a, b in zip(diffs, diffs[1:])]
    n32 = 32768
    return (f"IMPOSSIBLE as model memory (Llama 2 7B, fp16, batch 1): the weights alone are "
            f"{p:.3g}·2 B = {weights:.2f} GiB, more than every FA2 cell up to 16K "
            f"({_x(fa, '{:g}')} GB) and the Standard cells to 8K. Adding the KV cache (2·32 layers·4096·"
            f"N·2 B = {_x(kv.values(), '{:g}')} GiB at 2K..32K), FA2 at 32K needs ≥ {weights + kv[n32]:.1f} "
            f"GiB, so 'Only Flash: Yes' on a 24 GB GPU cannot hold. As one attention layer (H=32, "
            f"D=128), the fp16 score matrix is 32·N²·2 B = {_x(s_layer.values(), '{:g}')} GiB: ×4 per "
            f"doubling, while the page's Standard−FA2 gap ({_x(diffs, '{:.1f}')} GB) grows "
            f"×{_x(steps)}; and FA2's growth from 2K to 32K ({fa[-1] - fa[0]:.1f} GB) is not the KV "
            f"cache's ({kv[n32] - kv[2048]:.1f} GiB) either.")


def check_training_memory() -> str:
    t = TABLES["training-memory"]
    p = LLAMA2_7B["params"]
    wg = 2 * p * 2 / GiB
    adam = 16 * p / GiB
    reds = [(n, 1 - t.num(n, "Flash Attn (GB)") / t.num(n, "Standard (GB)"), t.num(n, "Reduction"))
            for n in (2048, 4096)]
    return (f"IMPLAUSIBLE (training memory, Llama 2 7B, batch 4): fp16 weights + fp16 gradients are "
            f"2·{p:.3g}·2 B = {wg:.1f} GiB and mixed-precision Adam state makes it 16 B/param = "
            f"{adam:.0f} GiB, before any activation; the page's {t.cell('2K', 'Flash Attn (GB)')} to "
            f"{t.cell('8K', 'Flash Attn (GB)')} GB cannot be full training on one GPU. Its reductions "
            f"are arithmetic on its own cells ("
            + "; ".join(f"{n}: {100 * r:.1f}% vs {pg:.0f}%" for n, r, pg in reds) +
            "), and 'OOM (>40GB)' points at a 40 GB card where the other A100 tables say 80 GB.")


def check_training_throughput() -> str:
    """Samples/sec as model FLOP/s (6·params·tokens, a sample read as one sequence: the kindest
    reading), against the A100's peak; and the whole-model speedups against Amdahl."""
    t = TABLES["training-throughput"]
    p = LLAMA2_7B["params"]
    peak = PEAK_TFLOPS[("A100", "float16")]
    parts, over = [], []
    for r in t.rows:
        b, n = int(r[0].split(" × ")[0]), seq_value(r[0].split(" × ")[1])
        fa = number(r[2])
        tf = training_tflops(p, n, fa)
        parts.append(f"{r[0]}: {tf:.0f} ({100 * tf / peak:.0f}%)")
        if tf > peak:
            over.append(r[0])
    d = LLAMA2_7B["d_model"]
    share = 4 * 2048 / (24 * d + 4 * 2048)
    att = TABLES["a100-speed"].num(2048, "Speedup (FA2)")
    need = (1 - 1 / 2.6) / (1 - 1 / att)
    f4, f8 = t.num("4 × 2K", "Flash Attn (samples/sec)"), t.num("8 × 2K", "Flash Attn (samples/sec)")
    return (f"IMPOSSIBLE on one A100 (training, Llama 2 7B, Flash column as model FLOP/s = "
            f"6·{p:.3g}·seq·samples/s, TFLOP/s and % of {peak:.0f}): " + "; ".join(parts) +
            f". {', '.join(over) or 'None'} exceed{'s' if len(over) == 1 else ''} the GPU's peak, and "
            f"4 × 2K already claims {100 * training_tflops(p, 2048, f4) / peak:.0f}% while doubling the "
            f"batch still gives {f8 / f4:.2f}× the samples/s (a GPU {100 * training_tflops(p, 2048, f4) / peak:.0f}% "
            f"busy cannot get {f8 / f4:.2f}× faster). Amdahl: attention is 4N/(24d+4N) = "
            f"{100 * share:.1f}% of Llama-2-7B's FLOPs at N=2048; for the model to run 2.6× faster with "
            f"attention {att:g}× faster (the page's A100 forward speedup at 2048), Standard attention "
            f"would have to take {100 * need:.0f}% of the step time.")


def training_tflops(params, seq, samples_per_s) -> float:
    """Model FLOP/s of training at `samples_per_s` sequences of `seq` tokens (6·params·tokens)."""
    return 6 * params * seq * samples_per_s / 1e12


def check_inference() -> str:
    t = TABLES["inference-throughput"]
    p = LLAMA2_7B["params"]
    L, d = LLAMA2_7B["layers"], LLAMA2_7B["d_model"]
    bw = PEAK_GBPS["A100"] * 1e9
    ceil = {n: bw / (p * 2 + 2 * L * d * n * 2) for n in t.seqs()}
    fa = t.series("Flash Attn (tokens/sec)")
    row16 = 32 * 16384 * 2 / MiB
    return (f"CONTRADICTION (inference, Llama 2 7B, A100): FA's tokens/s rises from "
            f"{t.cell('512', 'Flash Attn (tokens/sec)')} at 512 to {t.cell('2K', 'Flash Attn (tokens/sec)')} "
            f"at 2K, but each generated token reads the weights ({p * 2 / GiB:.2f} GiB) plus the KV "
            f"cache (2·32·4096·2 B = 0.5 MiB per context token), so time per token cannot fall as the "
            f"context grows. Bandwidth ceilings at 2039 GB/s: "
            + ", ".join(f"{n}: {c:.0f}" for n, c in ceil.items()) +
            f" tokens/s (the page's {_x([v for _, v in fa], '{:g}')} are under them). Decoding has no "
            f"N×N matrix (one score row at 16K is 32·16384·2 B = {row16:.0f} MiB per layer), so "
            f"Standard's 'OOM' at 16K can only come from the prefill's 16 GiB-per-layer fp16 score "
            f"matrix.")


def check_model_tables() -> str:
    m = TABLES["llama2-models"]
    peak = PEAK_TFLOPS[("A100", "float16")]
    parts = []
    for r in m.rows:
        p = LLAMA2_PARAMS[r[0]]
        tf = training_tflops(p, 2048, number(r[3]))
        parts.append(f"{r[0]}: {tf:.0f} TFLOP/s ({100 * tf / peak:.0f}%)")
    w70 = LLAMA2_PARAMS["Llama 2 70B"] * 2 / GiB
    g = TABLES["gpt-models"]
    att = {n: v for n, v in TABLES["a100-speed"].series("Speedup (FA2)")}[1024]
    gpt = []
    for r in g.rows:
        d = GPT_D_MODEL[r[0]]
        sp = number(r[3])
        share = 4 * 1024 / (24 * d + 4 * 1024)
        need = (1 - 1 / sp) / (1 - 1 / att)
        gpt.append(f"{r[0]} {sp:g}×: attention is {100 * share:.1f}% of FLOPs, needs "
                   f"{'>100% (impossible)' if need > 1 else f'{100 * need:.0f}%'} of the time")
    return (f"IMPLAUSIBLE (model tables): Llama 2 on 'A100 80GB', batch 4, seq 2048, Flash column as "
            f"model FLOP/s (6·params·2048·samples/s): " + "; ".join(parts) + f" of one A100's {peak:.0f}; the "
            f"70B model's fp16 weights alone are {w70:.0f} GiB, over 80 GB. GPT table (seq 1024, no GPU "
            f"or batch given): by Amdahl, with attention {att:g}× faster (the page's A100 forward "
            f"speedup at 1024) a whole-model speedup s needs Standard attention to take "
            f"(1−1/s)/(1−1/{att:g}) of the time: " + "; ".join(gpt) + ".")


def check_recommendations() -> str:
    s = TABLES["llama2-7b-memory"]
    red = [(n, a / b) for (n, a), (_, b) in zip(s.series("Standard Attention"), s.series("Flash Attention 2"))
           if a is not None]
    short = [TABLES[k].num(512, c) for k, c in (("a100-speed", "Speedup (FA2)"), ("a10g-speed", "Speedup"))]
    short.append(TABLES["h100-speed"].num(512, "Standard") / TABLES["h100-speed"].num(512, "Flash Attn 2"))
    return (f"PARTLY SUPPORTED (recommendations): '5-10x memory reduction' for long-context inference "
            f"vs the page's Llama rows: Standard/FA2 = "
            + ", ".join(f"{n}: {r:.1f}×" for n, r in red) +
            f" (the B=8 table's 80-94% reductions are 5-17×, but see its 16× error); '1.2-1.5x' at "
            f"<512 tokens matches the speed tables at 512 ({_x(short)}×).")


CHECKS = (check_speedup_growth, check_per_token_time_physics, check_per_token_memory,
          check_memory_table, check_memory_totals, check_versions_tflops, check_versions_util,
          check_fp8_key_insight, check_versions_memory, check_versions_speedups, check_speed_tables,
          check_llama_memory, check_training_memory, check_training_throughput, check_inference,
          check_model_tables, check_recommendations)


def findings() -> list:
    """Every check's finding, in the page's order of topics."""
    return [c() for c in CHECKS]


# --------------------------------------------------------------------------------------------------
# Claims beside measurements
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    seq: int
    what: str  # e.g. "Flash Attn 2 forward time"
    value: float | None  # None where the page says OOM / N/A
    unit: str  # ms, MiB, ms/token, MiB/token, x, TFLOP/s, %
    metric: str  # time | memory | speedup | time_per_token | memory_per_token | tflops | util
    column: str  # the page's column (or row) name
    kernels: tuple  # our kernels / peers measured against it
    table: str  # key into TABLES
    gpu: str | None
    batch: int | None = None
    heads: int | None = None
    head_dim: int | None = None
    dtype: str | None = None  # only where the page says it
    note: str = ""

    def row(self) -> tuple:
        return (self.seq, self.what, self.value, self.unit)

    def label(self) -> str:
        where = self.gpu.split()[0] if self.gpu else TABLES[self.table].config.get("model", "")
        return f"page{' ' + where if where else ''}: {self.column}"


def _claims(key, columns, metric, unit, convert=number, what=""):
    t = TABLES[key]
    cfg = {**t.assumed, **t.config}
    out = []
    for col in columns:
        for n, v in t.series(col, convert):
            raw = t.row(col)[t.columns[t.seqs().index(n) + 1]] if t.transposed else t.cell(n, col)
            out.append(Claim(n, f"{col} {what}".strip(), v, unit, metric, col, KERNELS_FOR.get(col, ()),
                             key, t.gpu, cfg.get("batch"), cfg.get("heads"), cfg.get("head_dim"),
                             t.config.get("dtype"), "" if v is not None else raw))
    return out


def _speed_claims():
    out = []
    out += _claims("h100-speed", ("Standard", "Flash Attn 2", "Flash Attn 3 (FP16)", "Flash Attn 3 (FP8)"),
                   "time", "ms", what="forward")
    out += _claims("h100-speed", ("Best Speedup",), "speedup", "x")
    out += _claims("a100-speed", ("Standard", "Flash Attn 2"), "time", "ms", what="forward")
    out += _claims("a100-speed", ("Speedup (FA2)",), "speedup", "x")
    out += _claims("a10g-speed", ("Standard", "Flash Attn 2"), "time", "ms", what="forward")
    out += _claims("a10g-speed", ("Speedup",), "speedup", "x")
    return out


def _memory_claims():
    out = _claims("memory-standard", ("Total",), "memory", "MiB", mib, "memory")
    out = [Claim(**{**c.__dict__, "what": "Standard total memory", "column": "Standard",
                    "kernels": KERNELS_FOR["Standard"]}) for c in out]
    fa = _claims("memory-flash2", ("Total",), "memory", "MiB", mib, "memory")
    out += [Claim(**{**c.__dict__, "what": "Flash Attn 2 total memory", "column": "Flash Attn 2",
                     "kernels": KERNELS_FOR["Flash Attn 2"]}) for c in fa]
    llama = _claims("llama2-7b-memory", ("Standard Attention", "Flash Attention 2"), "memory", "MiB", mib,
                    "(Llama 2 7B model memory)")
    out += [Claim(**{**c.__dict__, "kernels": KERNELS_FOR["Standard" if "Standard" in c.column else "Flash Attn 2"],
                     "note": c.note or "the page's whole-model figure; ours is one attention layer"})
            for c in llama]
    return out


def _scaling_claims():
    out = _claims("per-token-time", ("Standard", "Flash Attn 2"), "time_per_token", "ms/token",
                  what="time per token")
    out += _claims("per-token-time", ("Speedup",), "speedup", "x")
    out += _claims("per-token-memory", ("Standard", "Flash Attn 2"), "memory_per_token", "MiB/token",
                   what="memory per token")
    return out


def _versions_claims():
    t = TABLES["versions"]
    cfg = {**t.assumed, **t.config}
    metrics = {"Forward time (ms)": ("time", "ms", number), "Memory (GB)": ("memory", "MiB", lambda c: number(c) * 1024),
               "TFLOPS": ("tflops", "TFLOP/s", number), "GPU util %": ("util", "%", number)}
    out = []
    for r in t.rows:
        metric, unit, conv = metrics[r[0]]
        for col, cell in zip(t.columns[1:], r[1:]):
            out.append(Claim(4096, f"{col} {r[0]}", conv(cell), unit, metric, col, KERNELS_FOR[col],
                             "versions", t.gpu, cfg["batch"], cfg["heads"], cfg["head_dim"], None))
    return out


SUITE_CLAIMS = {
    "seed-speed": _speed_claims,
    "seed-memory": _memory_claims,
    "seed-scaling": _scaling_claims,
    "seed-versions": _versions_claims,
}


# The training, inference and model tables (issue 9's suites, run by scripts/gpu_training_inference.py).
# Every one is a whole-model figure on an A100 (or no GPU named); ours are one attention layer at the
# model's shape, so a claim and a measurement sit side by side with that said, not as a ratio to trust.
MODEL_SHAPES = {  # attention of each model: (query heads, key/value heads, head dim), model cards
    "Llama 2 7B": (32, 32, 128), "Llama 2 13B": (40, 40, 128), "Llama 2 70B": (64, 8, 128),
    "GPT-2 (124M)": (12, 12, 64), "GPT-J (6B)": (16, 16, 256), "GPT-NeoX (20B)": (64, 64, 96),
}
WHOLE_MODEL = "the page's whole-model figure; ours is one attention layer at the model's shape"


def _training_claims():
    t = TABLES["training-throughput"]
    heads, _, dim = MODEL_SHAPES["Llama 2 7B"]
    out = []
    for r in t.rows:
        batch, seq = int(r[0].split(" × ")[0]), seq_value(r[0].split(" × ")[1])
        for col, kernels, metric, unit in (
                ("Standard (samples/sec)", ("torch-standard",), "samples_per_s", "samples/s"),
                ("Flash Attn (samples/sec)", ("flash2", "sdpa-flash"), "samples_per_s", "samples/s"),
                ("Speedup", (), "speedup", "x")):
            cell = t.cell(r[0], col)
            v = number(cell) if metric != "speedup" or cell.endswith("x") else None
            out.append(Claim(seq, f"{r[0]} {col}", v, unit, metric, col, kernels, t.key, t.gpu,
                             batch, heads, dim, None, WHOLE_MODEL if v is not None else cell))
    return out


def _inference_claims():
    t = TABLES["inference-throughput"]
    heads, _, dim = MODEL_SHAPES["Llama 2 7B"]
    out = []
    for col, kernels in (("Standard (tokens/sec)", ("torch-standard",)),
                         ("Flash Attn (tokens/sec)", ("decode", "sdpa-flash", "torch-gather-sdpa"))):
        for n, v in t.series(col):
            out.append(Claim(n, col, v, "tokens/s", "tokens_per_s", col, kernels, t.key, t.gpu, 1,
                             heads, dim, None, WHOLE_MODEL if v is not None else t.cell(n, col)))
    return out


def _models_claims():
    out = []
    for key, metric, unit in (("llama2-models", "samples_per_s", "samples/s"),
                              ("gpt-models", "tokens_per_s", "tokens/s")):
        t = TABLES[key]
        for r in t.rows:
            heads, _, dim = MODEL_SHAPES[r[0]]
            for col in t.columns[1:]:
                if col == "Params":
                    continue
                speed = col == "Speedup"
                kernels = () if speed else (("torch-standard",) if col.startswith("Standard")
                                            else ("flash2", "sdpa-flash"))
                out.append(Claim(t.config["seq"], f"{r[0]} {col}", number(t.cell(r[0], col)),
                                 "x" if speed else unit, "speedup" if speed else metric, col, kernels,
                                 key, t.gpu, t.config.get("batch"), heads, dim, None,
                                 f"{r[0]}; " + WHOLE_MODEL))
    return out


TRAINING_INFERENCE_CLAIMS = {
    "seed-training": _training_claims,
    "seed-inference": _inference_claims,
    "seed-models": _models_claims,
}


def claims_for(suite_name, gpu: str | None = None) -> list:
    """The page's claims a suite's measurements go beside, as `Claim`s (`.row()` is (seq, what,
    value, unit)). `ladder` gets the speed and memory tables (same config); `seed` all four; `verify`
    and None nothing. `gpu` ("H100", "A100", "A10G") keeps only that GPU's rows, and the rows of
    tables that name no GPU."""
    if suite_name in (None, "verify", "compare"):
        out = []
    elif suite_name == "seed":
        out = [c for f in SUITE_CLAIMS.values() for c in f()]
    elif suite_name == "perf":  # (the same shape as seed-versions: B=8 H=32 D=64, seq 4096)
        out = SUITE_CLAIMS["seed-versions"]()
    elif suite_name == "ladder":
        out = _speed_claims() + [c for c in _memory_claims() if c.table.startswith("memory-")]
    elif suite_name in SUITE_CLAIMS:
        out = SUITE_CLAIMS[suite_name]()
    elif suite_name in TRAINING_INFERENCE_CLAIMS:
        out = TRAINING_INFERENCE_CLAIMS[suite_name]()
    else:
        raise ValueError(f"no claims for suite {suite_name!r}; known: "
                         f"{sorted(SUITE_CLAIMS) + sorted(TRAINING_INFERENCE_CLAIMS)}, ladder, seed")
    if gpu:
        out = [c for c in out if c.gpu is None or gpu.lower() in c.gpu.lower()]
    return out


def measured_value(point: dict, metric: str):
    """The number in a compare point that a claim of this metric is compared with (None if absent)."""
    t = point.get("timing") or {}
    mem = point.get("memory") or {}
    tokens = point["batch"] * point["seq_q"]
    peak = mem.get("peak_MiB")
    if metric == "time":
        return t.get("median_ms")
    if metric == "memory":
        return peak
    if metric == "time_per_token":
        return None if t.get("median_ms") is None else t["median_ms"] / tokens
    if metric == "memory_per_token":
        return None if peak is None else peak / tokens
    if metric == "tflops":
        return point.get("tflops")
    return None


def beside(claim: Claim, points) -> list:
    """[(kernel, measured, measured/claimed)] for the points of the claim's kernels at its seq and
    shape (batch/heads/head_dim where the claim has them)."""
    out = []
    for p in points:
        if p.get("kernel") not in claim.kernels or p.get("seq_q") != claim.seq:
            continue
        if any(getattr(claim, k) not in (None, p.get(k)) for k in ("batch", "heads", "head_dim")):
            continue
        v = measured_value(p, claim.metric)
        ratio = None if v is None or not claim.value else v / claim.value
        out.append((p["kernel"], p.get("dtype"), v, ratio))
    return out


if __name__ == "__main__":
    for text in findings():
        print("-", text, "\n")
