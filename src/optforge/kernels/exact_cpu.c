/* Lion, AdamW (and Adam's direction alone) and SGD with momentum on fp32 CPU tensors, one
 * call per list of tensors; and the finite check of a list of gradients.
 *
 * A kernel backend of optforge.optim.rules, like the Triton kernels: the rules there are the
 * math, and this file repeats their operations in their order, each rounded once to fp32, so
 * results are bit-identical to the rule run eagerly (backend="loop"):
 *  - every hyperparameter arrives as the fp32 value eager ATen gives a Python scalar that meets
 *    an fp32 tensor (the scalar arithmetic, e.g. 1 - lr*wd, done in double first, in Python);
 *  - no contraction into FMA (built with -ffp-contract=off, never -ffast-math);
 *  - sqrtf is IEEE's correctly rounded root, which rules.exact_sqrt computes;
 *  - sign as ATen's: (0 < c) - (c < 0), so sign(+-0) = +0 and sign(NaN) = 0.
 * tests/kernels/test_exact_cpu.py checks every rule and flag bit for bit against the loop.
 *
 * Work is split over OpenMP threads by fixed-size blocks of elements across all tensors of
 * the list (a table of addresses and sizes), so a list of many small tensors opens one
 * parallel region, not one per tensor; each thread takes one contiguous run of blocks.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdatomic.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 16384 /* elements: 64 KiB per fp32 stream, 4 streams fit a core's L2 */
#define INLINE static inline __attribute__((always_inline))

/* Software prefetch. The update loops run in chunks of CHUNK elements, each first asking for
 * the cache lines PF_AHEAD bytes ahead in every stream it reads: the hardware prefetcher alone
 * keeps too few lines in flight for one core to reach its bandwidth on 3-5 streams [measured,
 * 31M fp32 in 53 tensors, min of 12, 1 thread: Lion 31.5 -> 28.0 ms, AdamW 41.9 -> 37.1 ms;
 * 2 threads: 16.3 -> 13.9, 21.7 -> 19.3; 1 to 4 KiB ahead alike, a prefetch for write no
 * better]. It changes no arithmetic, and a prefetch past the end of an array never faults. */
#define PF_AHEAD 2048 /* bytes */
#define CHUNK 64      /* elements: 256 B, four cache lines of an fp32 stream */
INLINE void prefetch(const void* x) {
    const char* c = (const char*)x + PF_AHEAD;
    for (int l = 0; l < CHUNK * 4; l += 64) __builtin_prefetch(c + l, 0, 3);
}
/* for (j = 0; j < n; j++) BODY, in chunks, each after its PREFETCHES */
#define CHUNKED(j, n, PREFETCHES, BODY)                                             \
    for (int64_t c0_ = 0; c0_ < (n); c0_ += CHUNK) {                                \
        const int64_t c1_ = c0_ + CHUNK < (n) ? c0_ + CHUNK : (n);                 \
        { const int64_t j = c0_; PREFETCHES }                                       \
        for (int64_t j = c0_; j < c1_; j++) BODY                                    \
    }

/* Index of the tensor that holds block b (first is non-decreasing, first[0] = 0). */
static int64_t tensor_of(const int64_t* first, int64_t n, int64_t b) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (first[mid] <= b) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/* Calls body(i, start, end) for every piece of block range [lo, hi): tensor i, elements
 * [start, end). */
#define FOR_PIECES(n, numel, first, lo, hi, BODY)                                   \
    do {                                                                            \
        if ((lo) >= (hi)) break;                                                    \
        int64_t i_ = tensor_of(first, n, lo);                                       \
        for (int64_t b_ = (lo); b_ < (hi);) {                                       \
            while (first[i_ + 1] <= b_) i_++;                                       \
            int64_t last_ = first[i_ + 1] < (hi) ? first[i_ + 1] : (hi);            \
            int64_t start_ = (b_ - first[i_]) * BLOCK;                              \
            int64_t end_ = (last_ - first[i_]) * BLOCK;                             \
            if (end_ > numel[i_]) end_ = numel[i_];                                 \
            { const int64_t i = i_, start = start_, end = end_; BODY }              \
            b_ = last_;                                                             \
        }                                                                           \
    } while (0)

/* The block size, for the Python side's tables. */
int64_t exact_block(void) { return BLOCK; }

/* Runs BODY (with i, start, end in scope) for every piece of a list of n tensors, inside one
 * parallel region of up to `threads` threads, at least MIN_BLOCKS blocks each (none for one
 * thread): each thread takes one contiguous run of blocks, [total*t/nt, total*(t+1)/nt). A
 * small list stays on the calling thread: a parallel region waits for every thread it wakes,
 * ~10 ms when one is descheduled on a loaded machine [measured: a 3-tensor Lion step took
 * 24 ms at load 7 on 2 threads]. */
#define MIN_BLOCKS 4
#ifdef _OPENMP
#define THREAD_ID() omp_get_thread_num()
#else
#define THREAD_ID() 0
#endif
#define PARALLEL_PIECES(n, numel, first, threads, BODY)                             \
    do {                                                                            \
        const int64_t total_ = (first)[n];                                          \
        int nt_ = (threads) < 1 ? 1 : (threads);                                    \
        if (total_ / MIN_BLOCKS < nt_)                                              \
            nt_ = (int)(total_ >= 2 * MIN_BLOCKS ? total_ / MIN_BLOCKS : 1);        \
        _Pragma("omp parallel num_threads(nt_) if (nt_ > 1)")                       \
        {                                                                           \
            const int64_t t_ = THREAD_ID();                                         \
            const int64_t lo_ = total_ * t_ / nt_, hi_ = total_ * (t_ + 1) / nt_;   \
            FOR_PIECES(n, numel, first, lo_, hi_, BODY);                            \
        }                                                                           \
    } while (0)

/* ATen's sign: (0 < c) - (c < 0) */
INLINE float sign_of(float c) { return (float)((0.0f < c) - (c < 0.0f)); }

/* h: lr, beta1, 1-beta1, beta2, 1-beta2, 1-lr*wd, inv_grad_scale */
INLINE void lion_piece(float* restrict p, float* restrict m, const float* restrict g,
                       int64_t n, const float* h, const int maximize, const int unscale) {
    const float lr = h[0], b1 = h[1], omb1 = h[2], b2 = h[3], omb2 = h[4], decay = h[5];
    const float inv = h[6];
    CHUNKED(j, n, { prefetch(g + j); prefetch(m + j); prefetch(p + j); }, {
        float gj = g[j];
        if (unscale) gj = gj * inv;
        if (maximize) gj = -gj;
        float mj = m[j];
        float u = sign_of(mj * b1 + gj * omb1);
        p[j] = p[j] * decay - u * lr;
        m[j] = mj * b2 + gj * omb2;
    })
}

void lion(int64_t n, const int64_t* numel, const int64_t* first, void* const* P,
          void* const* M, void* const* G, const float* h, int maximize, int unscale,
          int threads) {
    PARALLEL_PIECES(n, numel, first, threads, {
            float* p = (float*)P[i] + start;
            float* m = (float*)M[i] + start;
            const float* g = (const float*)G[i] + start;
            int64_t k = end - start;
            /* maximize and unscale as compile-time constants of four inlined copies */
            if (maximize) {
                if (unscale) lion_piece(p, m, g, k, h, 1, 1); else lion_piece(p, m, g, k, h, 1, 0);
            } else {
                if (unscale) lion_piece(p, m, g, k, h, 0, 1); else lion_piece(p, m, g, k, h, 0, 0);
            }
    });
}

/* h: lr, beta1, 1-beta1, beta2, 1-beta2, 1-lr*wd, inv_grad_scale, eps, bias_correction1,
 * bias_correction2. inner: write Adam's direction u into P (adam_inner_rule) instead of
 * applying it to the parameter P. */
INLINE void adam_piece(float* restrict p, float* restrict m, float* restrict v,
                       const float* restrict g, int64_t n, const float* h, const int maximize,
                       const int unscale, const int inner) {
    const float lr = h[0], b1 = h[1], omb1 = h[2], b2 = h[3], omb2 = h[4], decay = h[5];
    const float inv = h[6], eps = h[7], bc1 = h[8], bc2 = h[9];
    CHUNKED(j, n, {
        prefetch(g + j); prefetch(m + j); prefetch(v + j);
        if (!inner) prefetch(p + j); /* the inner rule only writes P */
    }, {
        float gj = g[j];
        if (unscale) gj = gj * inv;
        if (maximize) gj = -gj;
        float mj = m[j] * b1 + gj * omb1;
        float vj = v[j] * b2 + gj * gj * omb2;
        float u = (mj / bc1) / (sqrtf(vj / bc2) + eps);
        p[j] = inner ? u : p[j] * decay - u * lr;
        m[j] = mj;
        v[j] = vj;
    })
}

void adam(int64_t n, const int64_t* numel, const int64_t* first, void* const* P,
          void* const* M, void* const* V, void* const* G, const float* h, int maximize,
          int unscale, int inner, int threads) {
    PARALLEL_PIECES(n, numel, first, threads, {
            float* p = (float*)P[i] + start;
            float* m = (float*)M[i] + start;
            float* v = (float*)V[i] + start;
            const float* g = (const float*)G[i] + start;
            int64_t k = end - start;
            if (inner) {
                adam_piece(p, m, v, g, k, h, 0, 0, 1); /* the inner rule: no maximize, no scale */
            } else if (maximize) {
                if (unscale) adam_piece(p, m, v, g, k, h, 1, 1, 0);
                else adam_piece(p, m, v, g, k, h, 1, 0, 0);
            } else {
                if (unscale) adam_piece(p, m, v, g, k, h, 0, 1, 0);
                else adam_piece(p, m, v, g, k, h, 0, 0, 0);
            }
    });
}

/* h: lr, momentum, 1-dampening, 1-lr*wd, inv_grad_scale */
INLINE void sgd_piece(float* restrict p, float* restrict b, const float* restrict g, int64_t n,
                      const float* h, const int maximize, const int unscale,
                      const int nesterov) {
    const float lr = h[0], mom = h[1], omd = h[2], decay = h[3], inv = h[4];
    CHUNKED(j, n, { prefetch(g + j); prefetch(b + j); prefetch(p + j); }, {
        float gj = g[j];
        if (unscale) gj = gj * inv;
        if (maximize) gj = -gj;
        float bj = b[j] * mom + gj * omd;
        float u = nesterov ? gj + bj * mom : bj;
        p[j] = p[j] * decay - u * lr;
        b[j] = bj;
    })
}

void sgd_momentum(int64_t n, const int64_t* numel, const int64_t* first, void* const* P,
                  void* const* B, void* const* G, const float* h, int maximize, int unscale,
                  int nesterov, int threads) {
    PARALLEL_PIECES(n, numel, first, threads, {
            float* p = (float*)P[i] + start;
            float* b = (float*)B[i] + start;
            const float* g = (const float*)G[i] + start;
            int64_t k = end - start;
            int f = (maximize << 2) | (unscale << 1) | nesterov;
            switch (f) { /* the flags as compile-time constants of inlined copies */
            case 0: sgd_piece(p, b, g, k, h, 0, 0, 0); break;
            case 1: sgd_piece(p, b, g, k, h, 0, 0, 1); break;
            case 2: sgd_piece(p, b, g, k, h, 0, 1, 0); break;
            case 3: sgd_piece(p, b, g, k, h, 0, 1, 1); break;
            case 4: sgd_piece(p, b, g, k, h, 1, 0, 0); break;
            case 5: sgd_piece(p, b, g, k, h, 1, 0, 1); break;
            case 6: sgd_piece(p, b, g, k, h, 1, 1, 0); break;
            default: sgd_piece(p, b, g, k, h, 1, 1, 1); break;
            }
    });
}

/* 1 if any element of x[0..n) has an all-ones exponent (an infinity or a NaN). Integer
 * compares and an OR, no float arithmetic: the loop vectorizes without reassociating
 * anything, and the answer is exact for every value. The range is read as STREAMS
 * interleaved sub-ranges: one core's read bandwidth grows with the streams in flight (a
 * single stream read at ~0.7x the bytes/s of Lion's five [measured, 31M fp32, 1 thread]),
 * and prefetched as the updates are [8.5 -> 8.0 ms on those 31M, 1.9 -> 1.5 ms on 9.3M in
 * 308 tensors, min of 12]. */
#define STREAMS 4
#define NONFINITE(NAME, T, EXP)                                                     \
    static int NAME(const T* restrict x, int64_t n) {                               \
        const int64_t q = n / STREAMS;                                              \
        T acc = 0;                                                                  \
        CHUNKED(j, q, { for (int s = 0; s < STREAMS; s++) prefetch(x + j + s * q); }, \
            { for (int s = 0; s < STREAMS; s++)                                     \
                acc |= (T)((x[j + s * q] & (EXP)) == (EXP)); })                     \
        for (int64_t j = STREAMS * q; j < n; j++) acc |= (T)((x[j] & (EXP)) == (EXP)); \
        return acc != 0;                                                            \
    }
NONFINITE(nonfinite16_bf, uint16_t, (uint16_t)0x7f80u)
NONFINITE(nonfinite16_h, uint16_t, (uint16_t)0x7c00u)
NONFINITE(nonfinite32, uint32_t, 0x7f800000u)
NONFINITE(nonfinite64, uint64_t, 0x7ff0000000000000ull)

/* 1 when every element of every tensor is finite. kind[i]: 0 fp32, 1 bf16, 2 fp16, 3 fp64.
 * Blocks as the updates; a thread skips its remaining pieces once any thread found one. */
int all_finite(int64_t n, const int64_t* numel, const int64_t* first, void* const* X,
               const int32_t* kind, int threads) {
    atomic_int bad = 0; /* relaxed: only ever set to 1, read after the region's barrier */
    PARALLEL_PIECES(n, numel, first, threads, {
        if (!atomic_load_explicit(&bad, memory_order_relaxed)) {
            int64_t k = end - start;
            int found;
            switch (kind[i]) {
            case 0: found = nonfinite32((const uint32_t*)X[i] + start, k); break;
            case 1: found = nonfinite16_bf((const uint16_t*)X[i] + start, k); break;
            case 2: found = nonfinite16_h((const uint16_t*)X[i] + start, k); break;
            default: found = nonfinite64((const uint64_t*)X[i] + start, k); break;
            }
            if (found) atomic_store_explicit(&bad, 1, memory_order_relaxed);
        }
    });
    return !atomic_load(&bad);
}
