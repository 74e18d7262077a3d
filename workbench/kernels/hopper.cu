// Hopper (sm_90a) primitives for the flash3 rung: each function wraps one PTX instruction (or one
// tightly bound group) that Numba has no Python spelling for, as mma.cu does for flash2_mma.
// Numba calls them through cuda.declare_device(..., abi="c", link=<this file>); NVRTC compiles this
// file to LTO-IR for the kernel's architecture and nvJitLink inlines the functions into the kernel,
// so the arrays the kernel passes by pointer (accumulators, fragments) stay in registers.
// No #include: plain PTX through inline asm, so NVRTC needs no CUDA headers.
//
// wgmma and setmaxnreg exist only on sm_90a ("arch-specific" features: the kernel must be compiled
// for compute_90a, which Numba does on a Hopper GPU and the compile checks ask for with
// cc=(9, 0, "a"), flash3.CC). Compiled for plain sm_90 (the ladder-wide compile check compiles
// every rung for sm_90) those two instructions become a trap, as CUTLASS does behind
// CUTE_ARCH_MMA_SM90A_ENABLED: such a kernel links, but must never run. TMA, mbarrier and the
// fences are sm_90 and stay as they are.
//
// Shared-memory addresses are 32-bit shared-window byte addresses (wbh_shared_address).
//
// Accumulator layout of wgmma m64nNk16 with f32 D (PTX ISA, "Register fragments for wgmma .m64nNk16"):
// warp w of the warpgroup owns rows 16w … 16w + 15; within them each 8-column block n8 is the
// mma.sync m16n8 C layout: lane 4g + t holds d[4·n8 + 0, 1] = D[16w + g][8·n8 + 2t, +1] and
// d[4·n8 + 2, 3] = D[16w + g + 8][8·n8 + 2t, +1]. A from registers (16-bit, m64k16) is the
// mma.sync m16n8k16 A layout per warp: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
// a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9].

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WBH_SM90A 1
#else
#define WBH_SM90A 0
#endif

// The instruction's text on sm_90a, a trap elsewhere (see the header).
#if WBH_SM90A
#define WBH_ASM(...) asm volatile(__VA_ARGS__)
#else
#define WBH_ASM(...) asm volatile("trap;")
#endif

// --- addresses, stores, conversions ---------------------------------------------------------------

// A generic address of shared memory as its 32-bit shared-window address (bytes).
extern "C" __device__ unsigned wbh_shared_address(const void* p)
{
    unsigned a;
    asm("{ .reg .u64 s; cvta.to.shared.u64 s, %1; cvt.u32.u64 %0, s; }" : "=r"(a) : "l"(p));
    return a;
}

// The 64-bit generic address of a device pointer (a tensor map's address, for the TMA).
extern "C" __device__ unsigned long long wbh_address(const void* p)
{
    return (unsigned long long)p;
}

// Store one register (two 16-bit values of O) to global memory: 4 bytes at element `elem`.
extern "C" __device__ void wbh_store_u32(void* gmem, unsigned long long elem, unsigned value)
{
    *(unsigned*)((unsigned short*)gmem + elem) = value;
}

// Two float32 values rounded to nearest even into one register of two 16-bit values, `lo` in the
// low half (P's A fragment from S's accumulators; O's stores).
extern "C" __device__ unsigned wbh_pack_f16x2(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

extern "C" __device__ unsigned wbh_pack_bf16x2(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// --- mbarrier: a 64-bit shared-memory object counting arrivals and transaction bytes -------------
//
// A phase completes when `count` threads have arrived AND the bytes announced by expect_tx have
// landed (the TMA's complete_tx decrements them); then the phase bit flips. A waiter asks "has the
// phase with parity P completed?" (try_wait.parity): a fresh barrier is in phase 0, so waiting on
// parity 1 returns at once (what a producer does on an empty buffer the first time round).

extern "C" __device__ void wbh_mbar_init(unsigned bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}

// Make the initialised barriers visible to the async proxy (the TMA unit) and to other threads:
// after the inits, before the block barrier that publishes them.
extern "C" __device__ void wbh_fence_mbar_init()
{
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Order this thread's generic-proxy shared-memory accesses before later async-proxy ones
// (wgmma reading what threads wrote, TMA overwriting what threads read).
extern "C" __device__ void wbh_fence_proxy_async()
{
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

extern "C" __device__ void wbh_mbar_arrive(unsigned bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}

// Arrive and announce `bytes` more transaction bytes for the current phase (the TMA copies that
// will complete on this barrier).
extern "C" __device__ void wbh_mbar_arrive_expect_tx(unsigned bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
                 :: "r"(bar), "r"(bytes) : "memory");
}

// Wait until the phase with parity `parity` has completed (a try_wait loop: try_wait suspends the
// thread for a while in hardware before it fails, so the loop does not spin hot). The braces make
// the labels local, so the function may be inlined many times.
extern "C" __device__ void wbh_mbar_wait(unsigned bar, unsigned parity)
{
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "WBH_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WBH_WAIT;\n"
                 "}" :: "r"(bar), "r"(parity) : "memory");
}

// --- TMA: cp.async.bulk.tensor ---------------------------------------------------------------------
//
// The tensor map (a 128-byte CUtensorMap built on the host by cuTensorMapEncodeTiled) lives in
// global memory here: Numba cannot pass a __grid_constant__ kernel parameter. PTX allows a tensor
// map in .global; one that was written through the generic proxy (our host-to-device copy) is
// acquired by the tensormap proxy once before its first use (fence.proxy.tensormap). Scope .sys:
// the map was written from the host by a memcpy (CUDA C++ Programming Guide, "Using TMA to
// transfer multi-dimensional arrays": "modified from the host using cudaMemcpy, the scope should
// be .sys"); the buffer is reused from a pool, so a stale map cached at .gpu scope is possible.

extern "C" __device__ void wbh_tensormap_acquire(unsigned long long tmap)
{
    asm volatile("fence.proxy.tensormap::generic.acquire.sys [%0], 128;" :: "l"(tmap) : "memory");
}

extern "C" __device__ void wbh_tensormap_prefetch(unsigned long long tmap)
{
    asm volatile("prefetch.tensormap [%0];" :: "l"(tmap) : "memory");
}

// One box of a 3-D tensor (x = column, y = row, z = batch·head) into shared memory at `dst`,
// completing (transaction bytes) on the mbarrier `bar`. Elements outside the tensor arrive as zeros
// (rows past N: the next head is never read), and still count as transaction bytes.
extern "C" __device__ void wbh_tma_load_3d(unsigned dst, unsigned long long tmap, int x, int y, int z,
                                           unsigned bar)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
            " [%0], [%1, {%2, %3, %4}], [%5];"
            :: "r"(dst), "l"(tmap), "r"(x), "r"(y), "r"(z), "r"(bar) : "memory");
}

// --- wgmma: warpgroup matrix multiply-accumulate ---------------------------------------------------
//
// The 4 warps of a warpgroup (128 threads) issue one m64nNk16 product together, asynchronously:
// wgmma.fence orders earlier register writes (accumulators, A fragments) before the product reads
// them; commit_group closes the products issued so far into a group; wait_group N blocks until at
// most N groups are still in flight. Until then the accumulators must not be touched.

extern "C" __device__ void wbh_wgmma_fence()
{
    WBH_ASM("wgmma.fence.sync.aligned;" ::: "memory");
}

extern "C" __device__ void wbh_wgmma_commit()
{
    WBH_ASM("wgmma.commit_group.sync.aligned;" ::: "memory");
}

extern "C" __device__ void wbh_wgmma_wait0()
{
    WBH_ASM("wgmma.wait_group.sync.aligned 0;" ::: "memory");
}

extern "C" __device__ void wbh_wgmma_wait1()
{
    WBH_ASM("wgmma.wait_group.sync.aligned 1;" ::: "memory");
}

// The shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): bits 0-13 start
// address >> 4, 16-29 leading-dimension byte offset >> 4, 32-45 stride-dimension byte offset >> 4,
// 49-51 base offset (0: tiles start 1024-byte aligned), 62-63 swizzle (1 = 128-byte).
// 128-byte swizzle is what the TMA writes with CU_TENSOR_MAP_SWIZZLE_128B: rows of 128 bytes (64
// 16-bit elements), 8 rows an atom of 1024 bytes in which 16-byte chunk c of row r sits at chunk
// c ^ (r % 8).
//   K-major (the reduction dimension contiguous: Q and K for S = Q Kᵀ): SBO = 1024 (from one
//   group of 8 rows to the next); LBO unused (1). A k-step of 16 elements adds 32 bytes to start.
//   MN-major (V for O += P V: D contiguous, keys are the reduction): SBO = 1024 (from 8 keys to the
//   next 8), LBO = the distance between 64-column panels of D. A k-step of 16 keys adds 2048 bytes.
extern "C" __device__ unsigned long long wbh_desc_sw128(unsigned addr, unsigned lbo, unsigned sbo)
{
    return (unsigned long long)((addr & 0x3FFFF) >> 4)
         | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16)
         | ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32)
         | (1ull << 62);
}

// The accumulator operand lists, 8 registers at a time.
#define WBH_ACC8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), \
                       "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define WBH_ACC32(d) WBH_ACC8(d, 0), WBH_ACC8(d, 8), WBH_ACC8(d, 16), WBH_ACC8(d, 24)
#define WBH_ACC64(d) WBH_ACC32(d), WBH_ACC8(d, 32), WBH_ACC8(d, 40), WBH_ACC8(d, 48), WBH_ACC8(d, 56)

#define WBH_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
                "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WBH_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
                "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
                "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
                "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// D (+)= A·B with A and B in shared memory (descriptors), no transpose: S = Q_i K_jᵀ, both
// K-major. `accumulate` = 0 ignores D's old value (the first k-step), 1 adds to it. The operands
// after the accumulators: %N desc A, %N+1 desc B, %N+2 accumulate.
#define WBH_WGMMA_SS(NAME, SHAPE, TYPE, DREGS, ACC, A, B, S)                                          \
    extern "C" __device__ void NAME(float* d, unsigned long long desc_a, unsigned long long desc_b, \
                                    int accumulate)                                                 \
    {                                                                                               \
        WBH_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" S ", 0;\n"                                     \
                "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " " DREGS               \
                ", %" A ", %" B ", p, 1, 1, 0, 0;\n}"                                               \
                : ACC(d) : "l"(desc_a), "l"(desc_b), "r"(accumulate));                              \
    }

// D += A·B with A from registers (4 per thread: P's fragment) and B in shared memory, transposed
// (imm-trans-b = 1: B is MN-major, V_j stored (key, d) with d contiguous). Operands after the
// accumulators: %N…%N+3 A, %N+4 desc B.
#define WBH_WGMMA_RS(NAME, SHAPE, TYPE, DREGS, ACC, A0, A1, A2, A3, B)                                  \
    extern "C" __device__ void NAME(float* d, const unsigned* a, unsigned long long desc_b)          \
    {                                                                                                 \
        WBH_ASM("wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " " DREGS                 \
                ", {%" A0 ", %" A1 ", %" A2 ", %" A3 "}, %" B ", 1, 1, 1, 1;"                          \
                : ACC(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));                \
    }

// S = Q Kᵀ: N = Bc keys (64 or 128).
WBH_WGMMA_SS(wbh_wgmma_ss_n64_f16, "m64n64k16", "f16", WBH_D32, WBH_ACC32, "32", "33", "34")
WBH_WGMMA_SS(wbh_wgmma_ss_n128_f16, "m64n128k16", "f16", WBH_D64, WBH_ACC64, "64", "65", "66")
WBH_WGMMA_SS(wbh_wgmma_ss_n64_bf16, "m64n64k16", "bf16", WBH_D32, WBH_ACC32, "32", "33", "34")
WBH_WGMMA_SS(wbh_wgmma_ss_n128_bf16, "m64n128k16", "bf16", WBH_D64, WBH_ACC64, "64", "65", "66")

// O += P V: N = D (64 or 128).
WBH_WGMMA_RS(wbh_wgmma_rs_n64_f16, "m64n64k16", "f16", WBH_D32, WBH_ACC32, "32", "33", "34", "35", "36")
WBH_WGMMA_RS(wbh_wgmma_rs_n128_f16, "m64n128k16", "f16", WBH_D64, WBH_ACC64, "64", "65", "66", "67", "68")
WBH_WGMMA_RS(wbh_wgmma_rs_n64_bf16, "m64n64k16", "bf16", WBH_D32, WBH_ACC32, "32", "33", "34", "35", "36")
WBH_WGMMA_RS(wbh_wgmma_rs_n128_bf16, "m64n128k16", "bf16", WBH_D64, WBH_ACC64, "64", "65", "66", "67", "68")

// The operand fence (CUTLASS's warpgroup_fence_operand): an empty asm that "reads and writes"
// every accumulator. Placed after wgmma.wait_group, it stops the compiler from reading the
// accumulators before the wait (to the compiler the wgmma asm produced them at once); placed
// before the first wgmma of a group, it stops it from sinking earlier writes (O's rescale) past it.
extern "C" __device__ void wbh_fence_acc32(float* d)
{
    asm volatile("" : WBH_ACC32(d) :: "memory");
}

extern "C" __device__ void wbh_fence_acc64(float* d)
{
    asm volatile("" : WBH_ACC64(d) :: "memory");
}

// --- warp specialization ---------------------------------------------------------------------------

// setmaxnreg: a warpgroup gives registers back to the SM's pool (dec) or takes them (inc); every
// warp of the warpgroup executes it. The producer drops to 24, the two consumers rise to 240:
// 128·24 + 256·240 = 64 512 of the 65 536 registers.
extern "C" __device__ void wbh_setmaxnreg_dec24()
{
    WBH_ASM("setmaxnreg.dec.sync.aligned.u32 24;" ::: "memory");
}

extern "C" __device__ void wbh_setmaxnreg_dec40()
{
    WBH_ASM("setmaxnreg.dec.sync.aligned.u32 40;" ::: "memory");
}

extern "C" __device__ void wbh_setmaxnreg_inc232()
{
    WBH_ASM("setmaxnreg.inc.sync.aligned.u32 232;" ::: "memory");
}

extern "C" __device__ void wbh_setmaxnreg_inc240()
{
    WBH_ASM("setmaxnreg.inc.sync.aligned.u32 240;" ::: "memory");
}

// Named barriers (16 per CTA; 0 is __syncthreads): bar.sync waits until `count` threads have
// arrived at barrier `id` (itself included); bar.arrive counts this thread and goes on. The
// ping-pong schedule passes the tensor cores between the two consumer warpgroups with them.
extern "C" __device__ void wbh_bar_sync(unsigned id, unsigned count)
{
    asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(count) : "memory");
}

extern "C" __device__ void wbh_bar_arrive(unsigned id, unsigned count)
{
    asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(count) : "memory");
}

// --- FP8 (e4m3): the k32 products, P's 8-bit fragments, V's transpose ------------------------------
//
// wgmma m64nNk32 .f32.e4m3.e4m3: 32 one-byte elements of the reduction per instruction (the same
// 32 bytes per row as k16 of 16-bit types). 8-bit operands have no transpose bit: A and B must both
// be K-major, so V_j (key, d) must become V_jᵀ (d, key) in shared memory before O += P V_j.
// A from registers (8-bit, m64k32) per warp, PTX ISA "Register fragments for wgmma .m64nNk32":
// a[0] = A[g][4t … 4t+3], a[1] = A[g+8][4t … 4t+3], a[2] = A[g][16+4t … 16+4t+3],
// a[3] = A[g+8][16+4t … 16+4t+3], the lowest column in the lowest byte. S's accumulator gives
// lane 4g + t the keys 2t, 2t+1, 8+2t, 9+2t of each 16: flash3 keeps them in that order as the
// A fragment's 4t … 4t+3 and stores V_jᵀ's key columns in the same permuted order instead.

// The 64-byte swizzle's descriptor (FP8 at D = 64: rows of 64 one-byte elements): 16-byte chunk c
// of row r at chunk c ^ ((r / 2) % 4), 8 rows an atom of 512 bytes (SBO); layout type 2.
extern "C" __device__ unsigned long long wbh_desc_sw64(unsigned addr, unsigned lbo, unsigned sbo)
{
    return (unsigned long long)((addr & 0x3FFFF) >> 4)
         | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16)
         | ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32)
         | (2ull << 62);
}

// D (+)= A·B, both 8-bit operands K-major in shared memory: no transpose immediates.
#define WBH_WGMMA_SS8(NAME, SHAPE, DREGS, ACC, A, B, S)                                                \
    extern "C" __device__ void NAME(float* d, unsigned long long desc_a, unsigned long long desc_b, \
                                    int accumulate)                                                 \
    {                                                                                               \
        WBH_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" S ", 0;\n"                                     \
                "wgmma.mma_async.sync.aligned." SHAPE ".f32.e4m3.e4m3 " DREGS                       \
                ", %" A ", %" B ", p, 1, 1;\n}"                                                     \
                : ACC(d) : "l"(desc_a), "l"(desc_b), "r"(accumulate));                              \
    }

// D += A·B, A (P) from 4 registers of 4 e4m3 each, B (V_jᵀ, K-major) in shared memory.
#define WBH_WGMMA_RS8(NAME, SHAPE, DREGS, ACC, A0, A1, A2, A3, B)                                       \
    extern "C" __device__ void NAME(float* d, const unsigned* a, unsigned long long desc_b)          \
    {                                                                                                 \
        WBH_ASM("wgmma.mma_async.sync.aligned." SHAPE ".f32.e4m3.e4m3 " DREGS                         \
                ", {%" A0 ", %" A1 ", %" A2 ", %" A3 "}, %" B ", 1, 1, 1;"                             \
                : ACC(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));                \
    }

WBH_WGMMA_SS8(wbh_wgmma_ss_n64_e4m3, "m64n64k32", WBH_D32, WBH_ACC32, "32", "33", "34")
WBH_WGMMA_SS8(wbh_wgmma_ss_n128_e4m3, "m64n128k32", WBH_D64, WBH_ACC64, "64", "65", "66")
WBH_WGMMA_RS8(wbh_wgmma_rs_n64_e4m3, "m64n64k32", WBH_D32, WBH_ACC32, "32", "33", "34", "35", "36")
WBH_WGMMA_RS8(wbh_wgmma_rs_n128_e4m3, "m64n128k32", WBH_D64, WBH_ACC64, "64", "65", "66", "67", "68")

// Four float32 values rounded to nearest even into four e4m3 bytes of one register, x0 in the
// lowest byte; saturating (|x| > 448 becomes ±448, not NaN). Two cvt's of two values each.
extern "C" __device__ unsigned wbh_pack_e4m3x4(float x0, float x1, float x2, float x3)
{
    unsigned r;
    asm("{\n.reg .b16 lo, hi;\n"
        "cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n"
        "cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
        "mov.b32 %0, {lo, hi};\n}"
        : "=r"(r) : "f"(x0), "f"(x1), "f"(x2), "f"(x3));
    return r;
}

// Byte permute: result byte i is byte selector[4i+3 : 4i] of the 8 bytes {b, a} (a's are 0-3).
extern "C" __device__ unsigned wbh_prmt(unsigned a, unsigned b, unsigned selector)
{
    unsigned r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
    return r;
}

// 32-bit shared-memory load and store at a shared-window address (V_j's transpose).
extern "C" __device__ unsigned wbh_lds32(unsigned addr)
{
    unsigned r;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(r) : "r"(addr) : "memory");
    return r;
}

extern "C" __device__ void wbh_sts32(unsigned addr, unsigned value)
{
    asm volatile("st.shared.b32 [%0], %1;" :: "r"(addr), "r"(value) : "memory");
}
