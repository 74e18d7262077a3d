"""End to end: a GPT-2-small-shaped model generating tokens with our decode rung, and with SDPA.

    python -m workbench.demos.gpt2 --out DIR [--contexts 256 1024 4096 8192] [--batch 1 8] [--tokens 32]

The model is GPT-2 small's shape — 12 layers, 12 heads of D=64, d_model 768, MLP 3072, vocabulary
50257, tied input/output embeddings, pre-LayerNorm, GELU (tanh) — with random weights drawn as GPT-2
initialises them (normal(0, 0.02), residual projections scaled by 1/sqrt(2·layers); seed fixed), in
float16 on the GPU. Nothing is downloaded. Its learned position table is made as long as the longest
context asked for (GPT-2 stops at 1024; the weights are random either way).

For each batch size B and prompt length N (a random prompt):

1. Prefill: the prompt through the model with SDPA (causal) — the same for both paths, so that both
   caches start from the same K and V and any difference comes from decoding. Our path then writes
   K and V into a *paged* cache: a pool of physical blocks of `--block-size` token slots shared by the
   batch, handed out in a shuffled order (`PagedBook`), and a block table per sequence, as vLLM and
   FlashAttention lay it out. The SDPA path copies them into a contiguous cache preallocated for
   N + T tokens (a "static" cache, written in place each step).
2. Generation: T tokens per sequence, greedily (argmax), one token per step through all 12 layers.
   Each step writes the new token's K and V into its cache and attends: (a) `decode`: our decode rung
   (workbench/kernels/paged_decode.py, split-KV over the paged cache, launched through the harness's runner
   with the problem and config checked once per run), (b) `sdpa`: torch SDPA with its flash backend forced
   over the contiguous cache. Everything else in the model is the same torch code.
3. Measured: tokens/s = B·T / (wall time of the generation loop, CUDA-synchronised before and after;
   after a 2-step warm-up), and peak memory: torch.cuda.max_memory_allocated during prefill and during
   generation (weights, cache — the paged cache is a torch tensor too — and activations), plus, for our
   path, the decode rung's split workspace, which Numba allocates outside torch's allocator.
4. Verified: (i) the paged cache through the public, validated `workbench.api.inference.decode` against SDPA
   on the contiguous prefill K/V (layer 0, a random query); (ii) the greedy tokens of the two paths
   compared, with the first divergence reported (a divergence where SDPA's top-2 logits are nearly
   tied is float16 rounding, not an error); (iii) both paths re-run teacher-forced on SDPA's tokens,
   comparing every layer's attention output and the logits at every step. Random weights make the
   attention's effect on the logits small, which is why (i) and (iii) compare attention outputs
   directly. Pass: (i) and (iii)'s attention within 1e-2 relative (Frobenius), logits within 2e-2.

Writes DIR/demo-gpt2.json (provenance, the model, the method, every point) and DIR/demo-gpt2.png,
and prints a table. Needs torch and a CUDA GPU; without them it says so and exits with status 2.
`PagedBook` (the block bookkeeping) is plain NumPy and is tested on the CPU (tests/test_demo_gpt2.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

GPT2_SMALL = dict(layers=12, heads=12, head_dim=64, d_model=768, mlp=3072, vocab=50257)
NEEDS = "workbench.demos.gpt2 needs torch and a CUDA GPU"
ATTN_TOL, LOGITS_TOL = 1e-2, 2e-2  # relative Frobenius, float16 paths
WARMUP_STEPS = 2


# --------------------------------------------------------------------------------------------------
# The paged cache's bookkeeping (NumPy; the GPU arrays live elsewhere)
# --------------------------------------------------------------------------------------------------
class PagedBook:
    """Which physical blocks hold each sequence's tokens.

    A pool of `num_blocks` blocks of `block_size` token slots is shared by `batch` sequences; blocks
    are handed out from a free list in a shuffled order (a server's pool after requests have come
    and gone is not in order), so a sequence's blocks are not contiguous. `table` is the block table
    (batch, max_blocks) int32 the decode rung reads: sequence b's token at position j lives in block
    table[b, j // block_size] at offset j % block_size; entries not handed out yet are -1."""

    def __init__(self, batch: int, num_blocks: int, block_size: int, max_blocks: int, seed: int = 0,
                 shuffle: bool = True):
        for name, v in (("batch", batch), ("num_blocks", num_blocks), ("block_size", block_size),
                        ("max_blocks", max_blocks)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.batch, self.num_blocks, self.block_size, self.max_blocks = batch, num_blocks, block_size, max_blocks
        order = np.random.default_rng(seed).permutation(num_blocks) if shuffle else np.arange(num_blocks)
        self.free = [int(x) for x in order[::-1]]  # pop() hands out order[0] first
        self.table = np.full((batch, max_blocks), -1, np.int32)
        self.owned = [0] * batch

    @staticmethod
    def blocks_for(length: int, block_size: int) -> int:
        return -(-int(length) // int(block_size))

    def reserve(self, b: int, length: int):
        """Give sequence b blocks enough for `length` tokens (no-op if it has them)."""
        need = self.blocks_for(length, self.block_size)
        if need > self.max_blocks:
            raise ValueError(f"sequence {b}: {length} tokens need {need} blocks of {self.block_size}, over "
                             f"the table's max_blocks {self.max_blocks}: make the table wider")
        while self.owned[b] < need:
            if not self.free:
                raise ValueError(f"the pool is out of blocks ({self.num_blocks} blocks of "
                                 f"{self.block_size} tokens, all handed out): make the pool larger or "
                                 f"release finished sequences")
            self.table[b, self.owned[b]] = self.free.pop()
            self.owned[b] += 1

    def release(self, b: int):
        """Sequence b is finished: its blocks go back to the pool."""
        self.free += [int(x) for x in self.table[b, : self.owned[b]][::-1]]
        self.table[b] = -1
        self.owned[b] = 0

    def slots(self, start: int, stop: int):
        """(blocks, offsets), each (batch, stop - start) int64: where positions start..stop-1 of every
        sequence live. They must have been reserved."""
        short = [b for b in range(self.batch) if self.owned[b] * self.block_size < stop]
        if short:
            raise ValueError(f"positions up to {stop - 1} of sequence(s) {short} have no block: reserve first")
        pos = np.arange(start, stop)
        return self.table[:, pos // self.block_size].astype(np.int64), np.broadcast_to(
            pos % self.block_size, (self.batch, stop - start)).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m workbench.demos.gpt2",
                                description="GPT-2-small-shaped generation: our paged decode rung vs SDPA.")
    p.add_argument("--out", default="out-demo-gpt2", metavar="DIR", help="writes DIR/demo-gpt2.{json,png}")
    p.add_argument("--contexts", type=_positive, nargs="+", default=[256, 1024, 4096, 8192],
                   help="prompt lengths (default %(default)s)")
    p.add_argument("--batch", type=_positive, nargs="+", default=[1, 8], help="batch sizes (default %(default)s)")
    p.add_argument("--tokens", type=_positive, default=32, help="tokens generated per sequence (default %(default)s)")
    p.add_argument("--block-size", type=_positive, default=16, help="paged cache block size (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=70.0,
                   help="skip the remaining configurations once this much wall time is spent (default %(default)s)")
    return p.parse_args(argv)


def _torch_or_reason():
    """(torch, None) when torch sees a CUDA GPU and workbench is not in simulator mode, else (None, why)."""
    from workbench.harness import device

    if device.simulator():
        return None, "workbench is in simulator mode (no CUDA driver)"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    return torch, None


# --------------------------------------------------------------------------------------------------
# The model: functional torch, weights in a dict
# --------------------------------------------------------------------------------------------------
def init_weights(torch, n_positions: int, seed: int, cfg=GPT2_SMALL):
    """GPT-2's initialisation, float16 on the GPU: normal(0, 0.02), residual projections scaled by
    1/sqrt(2·layers), biases 0, LayerNorm 1/0."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    C, L = cfg["d_model"], cfg["layers"]

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).mul_(std).half()

    def zeros(*shape):
        return torch.zeros(*shape, device="cuda", dtype=torch.float16)

    def ones(*shape):
        return torch.ones(*shape, device="cuda", dtype=torch.float16)

    proj_std = 0.02 / math.sqrt(2 * L)
    W = {"wte": normal(cfg["vocab"], C), "wpe": normal(n_positions, C), "lnf_w": ones(C), "lnf_b": zeros(C),
         "layers": []}
    for _ in range(L):
        W["layers"].append({
            "ln1_w": ones(C), "ln1_b": zeros(C),
            "attn_w": normal(3 * C, C), "attn_b": zeros(3 * C),
            "proj_w": normal(C, C, std=proj_std), "proj_b": zeros(C),
            "ln2_w": ones(C), "ln2_b": zeros(C),
            "fc_w": normal(cfg["mlp"], C), "fc_b": zeros(cfg["mlp"]),
            "fc2_w": normal(C, cfg["mlp"], std=proj_std), "fc2_b": zeros(C)})
    return W


def n_parameters(W) -> int:
    return sum(t.numel() for k, t in W.items() if k != "layers") + sum(
        t.numel() for layer in W["layers"] for t in layer.values())


def _qkv(torch, lw, x, heads):
    """LayerNorm, then the fused QKV projection split into (B, H, n, D) each."""
    F = torch.nn.functional
    B, n, C = x.shape
    h = F.layer_norm(x, (C,), lw["ln1_w"], lw["ln1_b"])
    t = F.linear(h, lw["attn_w"], lw["attn_b"]).view(B, n, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    return t[0], t[1], t[2]


def _after_attention(torch, lw, x, o):
    """Output projection and residual, then the MLP block and residual."""
    F = torch.nn.functional
    B, n, C = x.shape
    x = x + F.linear(o.transpose(1, 2).reshape(B, n, C), lw["proj_w"], lw["proj_b"])
    h = F.layer_norm(x, (C,), lw["ln2_w"], lw["ln2_b"])
    return x + F.linear(F.gelu(F.linear(h, lw["fc_w"], lw["fc_b"]), approximate="tanh"), lw["fc2_w"], lw["fc2_b"])


def _logits(torch, W, x_last):
    F = torch.nn.functional
    return F.linear(F.layer_norm(x_last, (x_last.shape[-1],), W["lnf_w"], W["lnf_b"]), W["wte"])


def prefill(torch, W, prompt, write_kv, heads):
    """The prompt (B, N) through the model with causal SDPA; write_kv(layer, k, v) stores each layer's
    K, V (B, H, N, D). Returns the last position's logits (B, vocab)."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    x = W["wte"][prompt] + W["wpe"][: prompt.shape[1]]
    for i, lw in enumerate(W["layers"]):
        q, k, v = _qkv(torch, lw, x, heads)
        write_kv(i, k, v)
        x = _after_attention(torch, lw, x, sdpa(q, k, v, is_causal=True))
    return _logits(torch, W, x[:, -1])


class ContiguousCache:
    """K, V (layers, B, H, capacity, D) preallocated; step `pos` writes slot pos and SDPA attends to
    slots 0..pos (a view: no copy)."""

    name = "sdpa"

    def __init__(self, torch, W, batch, capacity, heads, head_dim):
        self.torch, self.W, self.heads = torch, W, heads
        shape = (len(W["layers"]), batch, heads, capacity, head_dim)
        self.k = torch.empty(shape, device="cuda", dtype=torch.float16)
        self.v = torch.empty_like(self.k)

    def write_prefill(self, i, k, v):
        n = k.shape[2]
        self.k[i, :, :, :n] = k
        self.v[i, :, :, :n] = v

    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def workspace_bytes(self) -> int:
        return 0

    def step(self, tok, pos, probe=None):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        torch, W = self.torch, self.W
        x = W["wte"][tok[:, None]] + W["wpe"][pos: pos + 1]
        for i, lw in enumerate(W["layers"]):
            q, k, v = _qkv(torch, lw, x, self.heads)
            self.k[i, :, :, pos] = k[:, :, 0]
            self.v[i, :, :, pos] = v[:, :, 0]
            # The flash backend, forced: left to choose, SDPA measured 48-73 ms per step at every
            # context and batch on the H100 (2026-11-25), which looks like a backend that plans
            # anew for each new KV length, not attention's cost.
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o = sdpa(q, self.k[i, :, :, : pos + 1], self.v[i, :, :, : pos + 1])
            if probe is not None:
                probe.append(o.float())
            x = _after_attention(torch, lw, x, o)
        return _logits(torch, W, x[:, -1])


class PagedCache:
    """K, V pools (layers, num_blocks, H, block_size, D) with one block table for all layers (as
    vLLM); each step writes the new token's slot and runs our decode rung on the pool."""

    name = "decode"

    def __init__(self, torch, W, batch, capacity, heads, head_dim, block_size, seed):
        from numba import cuda

        from workbench.api import inference as dec
        from workbench.harness import runner
        from workbench.kernels import get

        self.torch, self.W, self.heads, self.bs = torch, W, heads, block_size
        blocks = PagedBook.blocks_for(capacity, block_size)
        self.book = PagedBook(batch, batch * blocks + 3, block_size, blocks, seed=seed)  # 3 spare blocks
        for b in range(batch):
            self.book.reserve(b, capacity)
        L = len(W["layers"])
        shape = (L, self.book.num_blocks, heads, block_size, head_dim)
        self.k = torch.full(shape, float("nan"), device="cuda", dtype=torch.float16)  # unused slots: NaN
        self.v = torch.full(shape, float("nan"), device="cuda", dtype=torch.float16)
        self.table = torch.as_tensor(self.book.table, device="cuda")
        self.table_long = self.table.long()
        self.lens = torch.zeros(batch, dtype=torch.int32, device="cuda")
        self.q = torch.empty((batch, heads, 1, head_dim), device="cuda", dtype=torch.float16)
        self.o = torch.empty_like(self.q)
        self.lse = torch.empty((batch, heads, 1), device="cuda", dtype=torch.float32)
        # One problem for the whole run, sized for its longest context: the kernel reads each
        # sequence's length from `lens` on the device; splits past it are empty and merge as zero.
        self.rung = get("decode", kind="decode")
        self.dec, self.runner = dec, runner
        self.problem = dec.DecodeProblem(batch, heads, heads, 1, head_dim, block_size, self.book.num_blocks,
                                         blocks, (capacity,) * batch, "float16", causal=True)
        self.config = runner.check_config(self.rung, self.problem)
        a = cuda.as_cuda_array
        self.k_, self.v_ = [a(self.k[i]) for i in range(L)], [a(self.v[i]) for i in range(L)]
        self.q_, self.o_, self.lse_ = a(self.q), a(self.o), a(self.lse)
        self.table_, self.lens_ = a(self.table), a(self.lens)
        self.pool = runner.Pool()

    def write_prefill(self, i, k, v):
        n = k.shape[2]
        if i == 0:  # the prompt's slots, the same for every layer
            self.slots = [self.torch.as_tensor(x, device="cuda") for x in self.book.slots(0, n)]
        blk, off = self.slots
        self.k[i][blk, :, off] = k.permute(0, 2, 1, 3)  # (B, N, H, D) into (block, :, offset)
        self.v[i][blk, :, off] = v.permute(0, 2, 1, 3)
        self.lens.fill_(n)

    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size() + self.table.numel() * 4 + self.lens.numel() * 4

    def workspace_bytes(self) -> int:
        return self.rung.module.workspace_bytes(self.problem, self.config)

    def step(self, tok, pos, probe=None):
        torch, W = self.torch, self.W
        x = W["wte"][tok[:, None]] + W["wpe"][pos: pos + 1]
        self.lens.fill_(pos + 1)  # every sequence of the batch is at the same position here
        blk = self.table_long[:, pos // self.bs]
        off = pos % self.bs
        for i, lw in enumerate(W["layers"]):
            q, k, v = _qkv(torch, lw, x, self.heads)
            self.k[i][blk, :, off] = k[:, :, 0]
            self.v[i][blk, :, off] = v[:, :, 0]
            self.q.copy_(q)
            self.runner.run(self.rung, self.problem, self.config, self.q_, self.k_[i], self.v_[i], self.table_,
                            self.lens_, self.o_, self.lse_, pool=self.pool)
            if probe is not None:
                probe.append(self.o.float())
            x = _after_attention(torch, lw, x, self.o)
        return _logits(torch, W, x[:, -1])


def generate(torch, cache, first, start, steps, forced=None, record=False):
    """Greedy generation from position `start`: step i feeds a token at position start + i and
    predicts the next. forced (B, steps): feed these instead of the predictions (teacher forcing).
    Returns the predictions (B, steps), and with record=True the logits (B, steps, vocab) and every
    layer's attention output per step, float32 on the CPU."""
    B = first.shape[0]
    out = torch.empty((B, steps), dtype=torch.long, device="cuda")
    tok, logits_all, probes = first, [], []
    for i in range(steps):
        probe = [] if record else None
        logits = cache.step(tok, start + i, probe)
        out[:, i] = logits.argmax(-1)
        if record:
            logits_all.append(logits.float().cpu())
            probes.append(torch.stack(probe).cpu())
        tok = forced[:, i] if forced is not None else out[:, i]
    if record:
        return out, torch.stack(logits_all, 1), torch.stack(probes)
    return out


def _rel(torch, a, b) -> float:
    return float(torch.linalg.vector_norm((a - b).float()) / torch.linalg.vector_norm(b.float()))


# --------------------------------------------------------------------------------------------------
# One configuration: both paths, measured and compared
# --------------------------------------------------------------------------------------------------
def run_config(torch, W, batch, context, tokens, block_size, seed):
    cfg = GPT2_SMALL
    H, D = cfg["heads"], cfg["head_dim"]
    g = torch.Generator(device="cuda").manual_seed(seed + 7919 * batch + context)
    prompt = torch.randint(0, cfg["vocab"], (batch, context), generator=g, device="cuda")
    capacity = context + tokens
    weights = 2 * n_parameters(W)  # float16
    points, runs = [], {}
    for path in ("sdpa", "decode"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        cache = (ContiguousCache(torch, W, batch, capacity, H, D) if path == "sdpa"
                 else PagedCache(torch, W, batch, capacity, H, D, block_size, seed))
        first = prefill(torch, W, prompt, cache.write_prefill, H).argmax(-1)
        torch.cuda.synchronize()
        peak_prefill = torch.cuda.max_memory_allocated() - held
        check = {}
        if path == "decode":  # (i) the paged cache through the validated public API vs SDPA
            from torch.nn.functional import scaled_dot_product_attention as sdpa

            q = torch.randn((batch, H, 1, D), generator=g, device="cuda", dtype=torch.float32).half()
            lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
            got = cache.dec.decode(q, cache.k[0], cache.v[0], cache.table, lens)
            k0, v0 = runs["sdpa"].pop("layer0")  # the contiguous cache's prefill K, V of layer 0
            check["paged_vs_sdpa_layer0_rel"] = _rel(torch, got, sdpa(q, k0, v0))
            del q, lens, got, k0, v0
        generate(torch, cache, first, context, min(WARMUP_STEPS, tokens))  # compile, warm caches
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        toks = generate(torch, cache, first, context, tokens)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak_gen = torch.cuda.max_memory_allocated() - held
        # (iii) teacher-forced on SDPA's tokens (for SDPA itself: its own greedy run again)
        ref_first, forced = (runs["sdpa"]["first"], runs["sdpa"]["tokens"]) if path == "decode" else (first, toks)
        _, logits, attn = generate(torch, cache, ref_first, context, tokens, forced=forced, record=True)
        runs[path] = {"tokens": toks, "first": first, "logits": logits, "attn": attn}
        if path == "sdpa":  # kept for check (i); held before the decode path starts, so not in its peak
            runs[path]["layer0"] = (cache.k[0, :, :, :context].clone(), cache.v[0, :, :, :context].clone())
        ws = cache.workspace_bytes()
        points.append({
            "path": path, "batch": batch, "context": context, "tokens": tokens, "status": "ok",
            "attention": "our decode rung, paged cache" if path == "decode" else "torch SDPA, contiguous cache",
            "block_size": block_size if path == "decode" else None,
            "seconds": seconds, "ms_per_step": 1e3 * seconds / tokens,
            "tokens_per_s": batch * tokens / seconds, "tokens_per_s_per_sequence": tokens / seconds,
            "memory": {"weights_MiB": weights / 2**20, "cache_MiB": cache.bytes() / 2**20,
                       "workspace_MiB": ws / 2**20,
                       "peak_prefill_MiB": (peak_prefill + ws) / 2**20,
                       "peak_generate_MiB": (peak_gen + ws) / 2**20,
                       "what": "torch.cuda.max_memory_allocated beyond what was held before this path "
                               "(the weights), plus the decode rung's workspace (Numba's allocator)"},
            **({"check": check} if check else {})})
        del cache, toks
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    check = points[-1]["check"]
    check.update(compare_runs(torch, runs["sdpa"], runs["decode"]))
    _judge(check)
    points[-1]["status"] = "pass" if check["passed"] else "FAIL"
    return points


def compare_runs(torch, ref, ours) -> dict:
    """The free-running tokens, and the teacher-forced logits and attention outputs."""
    a, b = ref["tokens"].cpu(), ours["tokens"].cpu()
    same_first = bool(torch.equal(ref["first"].cpu(), ours["first"].cpu()))
    diff = (a != b).nonzero()
    divergence = None
    if len(diff):
        first_step = int(diff[:, 1].min())
        row = int(diff[diff[:, 1] == first_step][0, 0])
        top2 = ref["logits"][row, first_step].topk(2).values
        divergence = {"step": first_step, "row": row, "sdpa_token": int(a[row, first_step]),
                      "decode_token": int(b[row, first_step]),
                      "sdpa_top2_gap": float(top2[0] - top2[1]),
                      "logits_max_abs_diff_there": float((ours["logits"][row, first_step]
                                                          - ref["logits"][row, first_step]).abs().max())}
    logits_rel = max(_rel(torch, ours["logits"][:, i], ref["logits"][:, i]) for i in range(a.shape[1]))
    attn_rel = max(_rel(torch, ours["attn"][i, j], ref["attn"][i, j])
                   for i in range(ref["attn"].shape[0]) for j in range(ref["attn"].shape[1]))
    forced_agree = float((ours["logits"].argmax(-1) == ref["logits"].argmax(-1)).float().mean())
    out = {"first_token_same": same_first, "tokens_identical": divergence is None, "first_divergence": divergence,
           "teacher_forced_logits_rel_fro_max": logits_rel, "teacher_forced_attention_rel_fro_max": attn_rel,
           "teacher_forced_argmax_agreement": forced_agree,
           "tolerance": {"attention_rel_fro": ATTN_TOL, "logits_rel_fro": LOGITS_TOL}}
    return out


def _judge(check) -> dict:
    check["passed"] = bool(check.get("paged_vs_sdpa_layer0_rel", 0) <= ATTN_TOL
                           and check["teacher_forced_attention_rel_fro_max"] <= ATTN_TOL
                           and check["teacher_forced_logits_rel_fro_max"] <= LOGITS_TOL)
    return check


# --------------------------------------------------------------------------------------------------
# Figure, table, main
# --------------------------------------------------------------------------------------------------
def figure(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench.bench import plots

    pts = [p for p in data["points"] if p.get("tokens_per_s")]
    if not pts:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for which, style in (("decode", "-"), ("sdpa", "--")):  # (not `path`: that is the PNG's)
        for b in sorted({p["batch"] for p in pts}):
            sel = sorted((p for p in pts if p["path"] == which and p["batch"] == b), key=lambda p: p["context"])
            if not sel:
                continue
            label = f"{'decode rung, paged' if which == 'decode' else 'SDPA flash, contiguous'} B={b}"
            xs = [p["context"] for p in sel]
            ax1.plot(xs, [p["tokens_per_s"] for p in sel], style, marker="o", label=label)
            ax2.plot(xs, [p["memory"]["peak_generate_MiB"] for p in sel], style, marker="o", label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (context)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax1.set_ylabel("generated tokens/s (all sequences)")
    ax2.set_ylabel("peak memory during generation, MiB (beyond weights)")
    dev = data["provenance"].get("device", "")
    fig.suptitle(f"GPT-2-small shape, random weights, fp16, greedy, {data['method']['tokens']} tokens — {dev}",
                 fontsize=9)
    fig.tight_layout()
    return plots.save_figure(fig, path, dpi=120)


def print_table(points):
    print(f"{'path':<7} {'B':>2} {'context':>7} {'tok/s':>9} {'ms/step':>8} {'peak gen MiB':>12} "
          f"{'cache MiB':>9}  check")
    for p in points:
        if p["status"] in ("OOM", "skipped"):
            print(f"{p['path']:<7} {p['batch']:>2} {p['context']:>7}  {p['status']}: {p.get('reason', '')[:80]}")
            continue
        c = p.get("check", {})
        note = ""
        if "passed" in c:
            div = c["first_divergence"]
            note = (f"{'pass' if c['passed'] else 'FAIL'}: attn {c['teacher_forced_attention_rel_fro_max']:.1e}, "
                    f"logits {c['teacher_forced_logits_rel_fro_max']:.1e}, paged {c['paged_vs_sdpa_layer0_rel']:.1e}, "
                    + ("tokens identical" if div is None else
                       f"tokens diverge at step {div['step']} (row {div['row']}, SDPA top-2 gap {div['sdpa_top2_gap']:.2g})"))
        m = p["memory"]
        print(f"{p['path']:<7} {p['batch']:>2} {p['context']:>7} {p['tokens_per_s']:>9.1f} {p['ms_per_step']:>8.2f} "
              f"{m['peak_generate_MiB']:>12.0f} {m['cache_MiB']:>9.0f}  {note}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch, why = _torch_or_reason()
    if torch is None:
        print(f"{NEEDS} ({why}).", file=sys.stderr)
        return 2
    from workbench.harness import device, memory

    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cfg = GPT2_SMALL
    method = {"tokens": args.tokens, "contexts": args.contexts, "batches": args.batch,
              "block_size": args.block_size, "warmup_steps": WARMUP_STEPS,
              "prefill": "SDPA (causal) for both paths; our path then writes K, V into its paged cache",
              "caches": "decode: paged (pool of blocks handed out shuffled, one block table for all layers, "
                        "unused slots NaN); sdpa: contiguous, preallocated for context + tokens, written in place",
              "timing": "wall time of the generation loop, torch.cuda.synchronize() before and after; "
                        "tokens/s = batch x tokens / seconds",
              "checks": "paged cache vs SDPA through workbench.api.inference.decode (layer 0); free-running tokens "
                        "compared; teacher-forced on SDPA's tokens, every layer's attention output and the "
                        "logits compared at every step"}
    data = {"provenance": None, "demo": "gpt2-small generation: decode rung vs SDPA", "complete": False,
            "model": {**cfg, "n_positions": max(args.contexts) + args.tokens, "dtype": "float16",
                      "weights": f"random, GPT-2 initialisation, seed {args.seed}", "tied_embeddings": True},
            "method": method, "points": []}
    path = os.path.join(args.out, "demo-gpt2.json")

    def save():
        data["provenance"] = device.provenance()  # after torch is imported: its version is recorded
        data["elapsed_s"] = round(time.perf_counter() - t0, 1)
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)

    failed = 0
    with torch.no_grad():
        W = init_weights(torch, max(args.contexts) + args.tokens, args.seed)
        data["model"]["parameters"] = n_parameters(W)
        for batch in sorted(args.batch):
            for context in sorted(args.contexts):
                if time.perf_counter() - t0 > args.budget_s:
                    data["points"] += [{"path": p, "batch": batch, "context": context, "status": "skipped",
                                        "reason": f"time budget {args.budget_s:g} s spent"} for p in ("sdpa", "decode")]
                    continue
                try:
                    pts = run_config(torch, W, batch, context, args.tokens, args.block_size, args.seed)
                    failed += pts[-1]["status"] == "FAIL"
                except Exception as exc:  # noqa: BLE001 - an OOM is a data point; anything else is raised
                    if not memory.is_oom(exc):
                        raise
                    pts = [{"path": p, "batch": batch, "context": context, "status": "OOM",
                            "reason": str(exc).splitlines()[0][:200]} for p in ("sdpa", "decode")]
                    torch.cuda.empty_cache()
                data["points"] += pts
                save()
                print(f"[{time.perf_counter() - t0:5.1f}s] B={batch} context={context}: "
                      + ", ".join(f"{p['path']} {p.get('tokens_per_s', 0):.1f} tok/s" for p in pts), flush=True)
    data["complete"] = True
    save()
    png = figure(data, os.path.join(args.out, "demo-gpt2.png"))
    print()
    print_table(data["points"])
    print(f"\nwrote {path}" + (f" and {png}" if png else "") + f" in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
