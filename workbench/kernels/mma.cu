// Tensor-core primitives for the flash2_mma rung: each function wraps one PTX instruction that
// Numba has no Python spelling for. Numba calls them through cuda.declare_device(..., abi="c",
// link=<this file>); NVRTC compiles this file to LTO-IR and nvJitLink inlines the functions into
// the kernel, so a call costs nothing and the fragment arrays the kernel passes by pointer stay in
// registers. No #include: plain PTX through inline asm, so NVRTC needs no CUDA headers.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"), with
// lane = 4·g + t (g = lane / 4 the "group", t = lane % 4 the thread in the group):
//   A (16×16, row-major), 4 registers of two 16-bit values:
//       a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]
//       a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   B (16×8, "col"), 2 registers:   b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   C, D (16×8, float32), 4 values: c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// The low 16 bits of a register hold the element with the smaller column (or row) index.

// A generic address of shared memory as the 32-bit shared-window address (bytes) that ldmatrix
// and cp.async take. The kernel converts each shared array once and then adds constant offsets:
// 32-bit additions that the compiler folds into the instructions' [register + immediate] form.
extern "C" __device__ unsigned wb_shared_address(const void* p)
{
    unsigned a;
    asm("{ .reg .u64 s; cvta.to.shared.u64 s, %1; cvt.u32.u64 %0, s; }" : "=r"(a) : "l"(p));
    return a;
}

// cp.async: copy 16 bytes from global to shared memory without passing through registers; the copy
// runs in the background until cp.async.wait_group. With valid = 0 nothing is read and the 16
// bytes are zero-filled (rows past the sequence's end).
extern "C" __device__ void wb_cp_async16(unsigned smem, const void* gmem, unsigned long long elem,
                                         int valid)
{
    const unsigned short* src = (const unsigned short*)gmem + elem;
    int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(smem), "l"(src), "r"(src_bytes) : "memory");
}

// Close the group of cp.async copies issued so far (one group per K/V tile).
extern "C" __device__ void wb_cp_async_commit()
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// Wait until at most 1 (or 0) groups are still in flight: the tile before the newest is in shared
// memory (for this thread's copies; a block barrier makes everybody's visible).
extern "C" __device__ void wb_cp_async_wait1()
{
    asm volatile("cp.async.wait_group 1;" ::: "memory");
}

extern "C" __device__ void wb_cp_async_wait0()
{
    asm volatile("cp.async.wait_group 0;" ::: "memory");
}

// ldmatrix .x4: four 8×8 matrices of 16-bit values from shared memory into fragment registers.
// Lane l gives the address of one 8-element (16-byte) row: lanes 0–7 the rows of matrix 0, 8–15
// of matrix 1, and so on; lane 4·g + t receives elements [g][2t, 2t+1] of each matrix, in r[0..3].
extern "C" __device__ void wb_ldmatrix_x4(unsigned* r, unsigned a)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}

// The same, transposed: lane 4·g + t receives elements [2t, 2t+1][g] of each matrix. This turns a
// row-major V tile (key, d) into the "col" B operand that P·V needs.
extern "C" __device__ void wb_ldmatrix_x4_trans(unsigned* r, unsigned a)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}

// D = A·B + C on the tensor cores, one 16×8×16 tile per warp, float32 accumulation in place.
extern "C" __device__ void wb_mma_f16(float* c, const unsigned* a, const unsigned* b)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

extern "C" __device__ void wb_mma_bf16(float* c, const unsigned* a, const unsigned* b)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Two float32 values rounded (to nearest even) into one register of two 16-bit values, `lo` in the
// low half: a C fragment's c[0], c[1] become an A fragment's register (P from S, in registers).
extern "C" __device__ unsigned wb_pack_f16x2(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

extern "C" __device__ unsigned wb_pack_bf16x2(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Store one register (two 16-bit values of O) to global memory: 4 bytes at element `elem`.
extern "C" __device__ void wb_store_u32(void* gmem, unsigned long long elem, unsigned value)
{
    *(unsigned*)((unsigned short*)gmem + elem) = value;
}

// --- for flash2_mma_bwd ---------------------------------------------------------------------------

// Load one register (two 16-bit values) from global memory: 4 bytes at element `elem`. The
// backward loads its warp's rows of V_j (and K_j) straight into A fragments with it, once per CTA.
extern "C" __device__ unsigned wb_load_u32(const void* gmem, unsigned long long elem)
{
    return *((const unsigned*)((const unsigned short*)gmem + elem));
}

// Add two float32 values to global memory at float element `elem` and elem + 1, atomically, one
// instruction for the pair (red.global.add.v2.f32, sm_90): the backward's dQ, summed over the CTAs
// of every K/V block. A reduction, not an atomic exchange: nothing comes back, nothing waits.
extern "C" __device__ void wb_red_add_f32x2(void* gmem, unsigned long long elem, float lo, float hi)
{
    float* p = (float*)gmem + elem;
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" :: "l"(p), "f"(lo), "f"(hi) : "memory");
}
