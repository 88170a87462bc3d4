/* AdamW and Lion on 8-bit blockwise state, one fused pass per 256-element block, on the CPU.
 *
 * The same arithmetic as optforge.optim.eightbit's eager rules, operation for operation, in
 * fp32 without contraction (built with -ffp-contract=off, never -ffast-math), so each result
 * is bit-identical to the eager rule: a run may switch between this kernel and the eager
 * path (a checkpoint resumed where no C compiler exists) and continue exactly.
 *
 * Per block: dequantize both moments (code book gather times the block's absmax), update in
 * fp32, write the parameter, keep the new moments in 1 KiB stack buffers (L1: no fp32
 * temporary reaches memory) while taking their absmax, and requantize them. AdamW does the
 * last inside the next block's loop, so one block's table work overlaps the next one's memory
 * traffic (3-4% faster than in turn [measured]). Memory traffic per element: p read + write,
 * g read, two codes read + write, absmax per 256: 16.06 B for fp32 p/g.
 *
 * Nearest code (optforge.kernels.quant): the number of the 255 midpoints below
 * y = x * (1/absmax). The top 17 bits of y (sign, exponent, 8 mantissa bits; magnitudes under
 * 2^-24 clamp into one row, |y| >= 1 into one entry) index a table. Each entry packs the count
 * of midpoints below the bucket, and the low 15 bits of the one midpoint inside it (no bucket
 * holds two), flipped for negative buckets, or 0x7fff if none: one table load and one integer
 * compare per value, where a search costs 8 compares and the two dependent loads of
 * quant.nearest_code twice this kernel's time. NaN, which the table does not cover, occurs
 * only in a block whose absmax is not finite: a second pass over such blocks fixes it.
 * tests/kernels/test_eightbit_cpu.py proves the table equal to torch.bucketize.
 *
 * Tensors come as tables of addresses; one call updates a whole list, its blocks shared out
 * over OpenMP threads.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define QBLOCK 256
/* table layout, shared with kernels/eightbit_cpu.py: [sign][32 rows][8 mantissa bits]. Row r
 * holds exponent E_LO - 1 + r; row 0 also every smaller one (|y| < 2^-24: no midpoint that
 * small), the first entry of row ROW_ONE every |y| >= 1; the rows past it pad a sign's half to
 * 2^SIGN_SHIFT entries, so the sign bit reaches the index by a shift. */
#define E_LO 103
#define ROW_ONE 25
#define SIGN_SHIFT 13
#define INLINE static inline __attribute__((always_inline))

/* Every loop below is branch-free (selects, gathers from the small tables), so the compiler
 * vectorizes it; dtype and sign choices are compile-time constants of inlined copies. */

INLINE float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

INLINE float load(const void* base, int64_t i, const int bf16) {
    return bf16 ? bits_f32((uint32_t)((const uint16_t*)base)[i] << 16) : ((const float*)base)[i];
}

INLINE void store(void* base, int64_t i, float x, const int bf16) {
    if (bf16) { /* round to nearest even, as torch's copy_; NaN stays a quiet NaN */
        uint32_t u = f32_bits(x);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        ((uint16_t*)base)[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : r);
    } else {
        ((float*)base)[i] = x;
    }
}

INLINE uint32_t abs_bits(float x) { return f32_bits(x) & 0x7fffffffu; }

/* A block's absmax from the max of the bits of its |x| (for non-negative floats their order is
 * the integers', and NaNs sort above inf): NaN when any x is NaN, as torch's amax. Returns the
 * factor of y = x * inv, whose divisor is 1 when the absmax is not > 0 (quantize_blockwise). */
INLINE float block_inv(uint32_t top, float* restrict absmax) {
    float amax = top > 0x7f800000u ? NAN : bits_f32(top);
    *absmax = amax;
    return 1.0f / (amax > 0.0f ? amax : 1.0f);
}

/* The nearest code of y (finite; see fix_non_finite). */
INLINE uint8_t code_of(float y, const int32_t* restrict table) {
    int32_t u = (int32_t)f32_bits(y); /* signed indices: what vector gathers take */
    int32_t r = ((u & 0x7fffffff) >> 15) - ((E_LO - 1) << 8);
    r = r < 0 ? 0 : r;
    r = r > ROW_ONE << 8 ? ROW_ONE << 8 : r; /* |y| >= 1: below every midpoint, or above */
    int32_t entry = table[r + ((u >> (31 - SIGN_SHIFT)) & (1 << SIGN_SHIFT))];
    /* y > the bucket's midpoint, compared on the 15 bits below the bucket's 17; for a negative
     * y the larger bits are the smaller value, so both sides are flipped (the table's at build
     * time). Equal: the lower code. */
    int32_t key = (u & 0x7fff) ^ ((u >> 31) & 0x7fff);
    return (uint8_t)((entry & 0xff) + (key > (entry >> 8)));
}

/* After code_of over a block whose absmax is inf (y = x * 0) or NaN (y = x): the NaNs of y take
 * the code of zero, as in quant.nearest_code. */
INLINE void fix_non_finite(const float* restrict x, int64_t n, uint32_t top, float inv,
                           uint8_t* restrict q, const int32_t* restrict table) {
    if (top >= 0x7f800000u) {
        const uint8_t zero = (uint8_t)(table[0] & 0xff);
        for (int64_t i = 0; i < n; i++) q[i] = isnan(x[i] * inv) ? zero : q[i];
    }
}

/* Codes and absmax of x[0..n). */
INLINE void requantize(const float* restrict x, int64_t n, uint8_t* restrict codes,
                       float* restrict absmax, const int32_t* restrict table) {
    uint32_t top = 0;
    for (int64_t i = 0; i < n; i++) top = abs_bits(x[i]) > top ? abs_bits(x[i]) : top;
    const float inv = block_inv(top, absmax);
    uint8_t q[QBLOCK]; /* a local buffer: provably apart from the tables, so gathers vectorize */
    for (int64_t i = 0; i < n; i++) q[i] = code_of(x[i] * inv, table);
    fix_non_finite(x, n, top, inv, q, table);
    memcpy(codes, q, (size_t)n);
}

/* the tensor holding global block `block`: first[t] <= block < first[t + 1] */
INLINE int64_t find_tensor(const int64_t* first, int64_t ntensors, int64_t block) {
    int64_t lo = 0, hi = ntensors - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (first[mid] <= block) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/* One element of AdamW (optim.eightbit._bnb_adamw) from its gradient and old moments: writes
 * the new moments to *m, *v and returns the new parameter. h as adamw8bit's hyper. */
INLINE float adamw_math(float gi, float pi, float mi, float vi, const float* restrict h,
                        float* restrict m, float* restrict v) {
    mi = mi * h[0] + gi * h[1];
    vi = vi * h[2] + gi * gi * h[3];
    float denom = sqrtf(vi) + h[4];
    *m = mi;
    *v = vi;
    return pi * h[5] - h[6] * (mi / denom);
}

/* AdamW on one block: dequantize, update, write p, and leave the new moments in m[], v[] with
 * the max of their |bits| in tops[0..1]. In the same loop, when both are whole blocks, the
 * previous block's moments (pm, pv, factors pinv) are requantized into qm, qv: the table work
 * of one block then overlaps the memory traffic of the next, where done apart it did not. */
INLINE void adamw_block(void* restrict p, const void* restrict g, const uint8_t* restrict mc,
                        float ma_k, const uint8_t* restrict vc, float va_k, int64_t start,
                        int64_t n, float gsign, const float* restrict code1,
                        const float* restrict code2, const float* restrict h,
                        float* restrict m, float* restrict v, uint32_t* restrict tops,
                        int64_t prev_n, const float* restrict pm, const float* restrict pv,
                        const float* restrict pinv, uint8_t* restrict qm,
                        uint8_t* restrict qv, const int32_t* restrict table1,
                        const int32_t* restrict table2, const int p_bf16, const int g_bf16) {
    const float inv_m = pinv[0], inv_v = pinv[1];
    int32_t im[QBLOCK], iv[QBLOCK]; /* int32 indices: gcc emulates gathers by uint8 ones */
    for (int64_t i = 0; i < n; i++) { im[i] = mc[i]; iv[i] = vc[i]; }
    uint32_t top_m = 0, top_v = 0;
#define ADAMW_ELEMENT(i)                                                                     \
    {                                                                                        \
        float gi = load(g, start + i, g_bf16) * gsign; /* g·(±s) = ±(g·s) exactly */         \
        float mi, vi;                                                                        \
        float pi = adamw_math(gi, load(p, start + i, p_bf16), code1[im[i]] * ma_k,           \
                              code2[iv[i]] * va_k, h, &mi, &vi);                             \
        store(p, start + i, pi, p_bf16);                                                     \
        m[i] = mi;                                                                           \
        v[i] = vi;                                                                           \
        top_m = abs_bits(mi) > top_m ? abs_bits(mi) : top_m;                                 \
        top_v = abs_bits(vi) > top_v ? abs_bits(vi) : top_v;                                 \
    }
    if (n == QBLOCK && prev_n == QBLOCK) {
        for (int64_t i = 0; i < QBLOCK; i++) {
            ADAMW_ELEMENT(i)
            qm[i] = code_of(pm[i] * inv_m, table1);
            qv[i] = code_of(pv[i] * inv_v, table2);
        }
    } else {
        for (int64_t i = 0; i < n; i++) ADAMW_ELEMENT(i)
        for (int64_t i = 0; i < prev_n; i++) {
            qm[i] = code_of(pm[i] * inv_m, table1);
            qv[i] = code_of(pv[i] * inv_v, table2);
        }
    }
#undef ADAMW_ELEMENT
    tops[0] = top_m;
    tops[1] = top_v;
}

INLINE void lion_block(void* restrict p, const void* restrict g, uint8_t* restrict mc,
                       float* restrict ma, int64_t start, int64_t n, float gsign,
                       const float* restrict code1, const int32_t* table1,
                       const float* restrict h, const int p_bf16, const int g_bf16) {
    const float beta1 = h[0], omb1 = h[1], beta2 = h[2], omb2 = h[3];
    const float decay = h[4], lr = h[5];
    const float ma_k = *ma;
    float m[QBLOCK];
    for (int64_t i = 0; i < n; i++) {
        float gi = load(g, start + i, g_bf16) * gsign;
        float mi = code1[mc[i]] * ma_k;
        float c = mi * beta1 + gi * omb1;
        float d = (float)((c > 0.0f) - (c < 0.0f)); /* torch.sign: 0 for 0 and NaN */
        float pi = load(p, start + i, p_bf16);
        store(p, start + i, pi * decay - d * lr, p_bf16);
        m[i] = mi * beta2 + gi * omb2;
    }
    requantize(m, n, mc, ma, table1);
}

#define DISPATCH(call)                                       \
    switch (p_bf16 * 2 + g_bf16) {                           \
        case 0: call(0, 0); break;                           \
        case 1: call(0, 1); break;                           \
        case 2: call(1, 0); break;                           \
        default: call(1, 1); break;                          \
    }

/* The blocks of every tensor, shared out over the threads: tensor t, its block k, holding
 * elements [start, start + n). */
#define FOR_EACH_BLOCK(BODY, GSCALE)                                                         \
    const int64_t nblocks = first[ntensors];                                                 \
    const float gsign = maximize ? -(GSCALE) : (GSCALE);                                     \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                       \
    for (int64_t b = 0; b < nblocks; b++) {                                                  \
        int64_t t = find_tensor(first, ntensors, b);                                         \
        int64_t k = b - first[t];                                                            \
        int64_t start = k * QBLOCK;                                                          \
        int64_t n = numel[t] - start < QBLOCK ? numel[t] - start : QBLOCK;                   \
        BODY                                                                                 \
    }

/* AdamW with fp32 moments (the tensors under min_8bit_size) on one block, in place. */
INLINE void adamw32_block(void* restrict p, const void* restrict g, float* restrict m,
                          float* restrict v, int64_t start, int64_t n, float gsign,
                          const float* restrict h, const int p_bf16, const int g_bf16) {
    for (int64_t i = start; i < start + n; i++) {
        float mi, vi;
        float pi = adamw_math(load(g, i, g_bf16) * gsign, load(p, i, p_bf16), m[i], v[i], h,
                              &mi, &vi);
        store(p, i, pi, p_bf16);
        m[i] = mi;
        v[i] = vi;
    }
}

#define ADAMW32(P, G)                                                                        \
    adamw32_block((void*)p_ptr[t], (const void*)g_ptr[t], (float*)m_ptr[t], (float*)v_ptr[t],  \
                  start, n, gsign, hyper, P, G)
#define LION(P, G)                                                                           \
    lion_block((void*)p_ptr[t], (const void*)g_ptr[t], (uint8_t*)m_ptr[t] + start,             \
               (float*)ma_ptr[t] + k, start, n, gsign, code1, table1, hyper, P, G)

/* The previous block of a thread's AdamW loop, awaiting its requantization. */
typedef struct {
    int64_t n; /* 0: none */
    uint8_t *mc, *vc;
    uint32_t tops[2];
    float inv[2];
} pending_t;

/* Write the pending block's codes, computed into qm, qv from its moments pm, pv. */
INLINE void store_pending(const pending_t* prev, const float* pm, const float* pv,
                          uint8_t* qm, uint8_t* qv, const int32_t* table1,
                          const int32_t* table2) {
    fix_non_finite(pm, prev->n, prev->tops[0], prev->inv[0], qm, table1);
    fix_non_finite(pv, prev->n, prev->tops[1], prev->inv[1], qv, table2);
    memcpy(prev->mc, qm, (size_t)prev->n);
    memcpy(prev->vc, qv, (size_t)prev->n);
}

INLINE void adamw_dispatch(const int64_t* p_ptr, const int64_t* g_ptr, const int64_t* m_ptr,
                           const int64_t* v_ptr, int64_t t, float ma_k, float va_k,
                           int64_t start, int64_t n, float gsign, const float* code1,
                           const float* code2, const float* hyper, float* m, float* v,
                           uint32_t* tops, const pending_t* prev, const float* pm,
                           const float* pv, uint8_t* qm, uint8_t* qv, const int32_t* table1,
                           const int32_t* table2, int p_bf16, int g_bf16) {
#define ADAMW(P, G)                                                                          \
    adamw_block((void*)p_ptr[t], (const void*)g_ptr[t], (const uint8_t*)m_ptr[t] + start,     \
                ma_k, (const uint8_t*)v_ptr[t] + start, va_k, start, n, gsign, code1, code2,  \
                hyper, m, v, tops, prev->n, pm, pv, prev->inv, qm, qv, table1, table2, P, G)
    DISPATCH(ADAMW)
#undef ADAMW
}

/* hyper: beta1, 1-beta1, beta2, 1-beta2, eps*c2, 1-lr*wd, lr*c2/(1-beta1^t) with
 * c2 = sqrt(1-beta2^t), each rounded to fp32 as torch rounds a Python scalar for an fp32
 * tensor, then the gradient's factor: GradScaler's inverse scale (1 unscaled; g * ±s is
 * exactly ±(g * s)).
 * Each thread takes a contiguous run of blocks (as schedule(static)) and walks it in order,
 * requantizing block b - 1 inside block b's loop. */
void adamw8bit(int64_t ntensors, const int64_t* numel, const int64_t* first,
               const int64_t* p_ptr, const int64_t* g_ptr, const int64_t* m_ptr,
               const int64_t* ma_ptr, const int64_t* v_ptr, const int64_t* va_ptr,
               int p_bf16, int g_bf16, int maximize,
               const float* code1, const int32_t* table1,
               const float* code2, const int32_t* table2,
               const float* hyper, int nthreads) {
    const int64_t nblocks = first[ntensors];
    const float gsign = maximize ? -hyper[7] : hyper[7];
#pragma omp parallel num_threads(nthreads)
    {
        int64_t id = 0, nt = 1;
#ifdef _OPENMP
        id = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t per = (nblocks + nt - 1) / nt;
        const int64_t b0 = id * per, b1 = b0 + per < nblocks ? b0 + per : nblocks;
        float buf_m[2][QBLOCK], buf_v[2][QBLOCK];
        uint8_t qm[QBLOCK], qv[QBLOCK];
        pending_t prev = {0};
        int64_t t = b0 < b1 ? find_tensor(first, ntensors, b0) : 0;
        for (int64_t b = b0; b < b1; b++) {
            while (first[t + 1] <= b) t++;
            const int64_t k = b - first[t], start = k * QBLOCK;
            const int64_t n = numel[t] - start < QBLOCK ? numel[t] - start : QBLOCK;
            float* ma = (float*)ma_ptr[t] + k;
            float* va = (float*)va_ptr[t] + k;
            const int cur = (int)(b & 1);
            uint32_t tops[2];
            adamw_dispatch(p_ptr, g_ptr, m_ptr, v_ptr, t, *ma, *va, start, n, gsign, code1,
                           code2, hyper, buf_m[cur], buf_v[cur], tops, &prev,
                           buf_m[cur ^ 1], buf_v[cur ^ 1], qm, qv, table1, table2,
                           p_bf16, g_bf16);
            if (prev.n)
                store_pending(&prev, buf_m[cur ^ 1], buf_v[cur ^ 1], qm, qv, table1, table2);
            prev.n = n;
            prev.mc = (uint8_t*)m_ptr[t] + start;
            prev.vc = (uint8_t*)v_ptr[t] + start;
            prev.tops[0] = tops[0];
            prev.tops[1] = tops[1];
            prev.inv[0] = block_inv(tops[0], ma);
            prev.inv[1] = block_inv(tops[1], va);
        }
        if (prev.n) { /* the last block: requantized alone */
            const int last = (int)((b1 - 1) & 1);
            for (int64_t i = 0; i < prev.n; i++) {
                qm[i] = code_of(buf_m[last][i] * prev.inv[0], table1);
                qv[i] = code_of(buf_v[last][i] * prev.inv[1], table2);
            }
            store_pending(&prev, buf_m[last], buf_v[last], qm, qv, table1, table2);
        }
    }
}

/* adamw8bit's rule on fp32 moments (optim.eightbit._adamw32); hyper as adamw8bit's. */
void adamw32(int64_t ntensors, const int64_t* numel, const int64_t* first,
             const int64_t* p_ptr, const int64_t* g_ptr, const int64_t* m_ptr,
             const int64_t* v_ptr, int p_bf16, int g_bf16, int maximize,
             const float* hyper, int nthreads) {
    FOR_EACH_BLOCK(DISPATCH(ADAMW32), hyper[7])
}

/* hyper: beta1, 1-beta1, beta2, 1-beta2, 1-lr*wd, lr, the gradient's factor. */
void lion8bit(int64_t ntensors, const int64_t* numel, const int64_t* first,
              const int64_t* p_ptr, const int64_t* g_ptr, const int64_t* m_ptr,
              const int64_t* ma_ptr, int p_bf16, int g_bf16, int maximize,
              const float* code1, const int32_t* table1,
              const float* hyper, int nthreads) {
    FOR_EACH_BLOCK(DISPATCH(LION), hyper[6])
}

/* Blockwise codes and absmax of x[0..n) (quant.quantize_blockwise's result, faster). */
void quantize8bit(int64_t n, const float* x, uint8_t* codes, float* absmax,
                  const int32_t* table, int nthreads) {
    const int64_t nblocks = (n + QBLOCK - 1) / QBLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t start = b * QBLOCK;
        int64_t len = n - start < QBLOCK ? n - start : QBLOCK;
        requantize(x + start, len, codes + start, absmax + b, table);
    }
}
