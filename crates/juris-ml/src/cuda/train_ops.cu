// CUDA kernels of the fused training ops of `train_ops.rs`, their backwards (`train_grads.rs`)
// and the fused AdamW update (`adamw.rs`), compiled to PTX by build.rs when the `cuda` feature
// is on. Each is one kernel reading the op's inputs where they lie and writing a fresh
// output: no device copies, no cuRAND generator, one launch per op.
//
// Row kernels give each row to one warp (32 lanes striding over the row, shuffles for the
// sums): the rows here are short (attention keys ≤ a few hundred, hidden sizes ≤ 2048) and
// numerous (batch × heads × queries), so a warp per row keeps every SM busy without shared
// memory.
//
// Element types: the graph ops come in f32, f64 and bf16 (mixed-precision training). f32 and
// f64 compute in their own type, exactly as before bf16 existed; bf16 is a storage type
// only: each value is widened to f32 on load, all arithmetic (sums, exp, sqrt, erf) is f32,
// and each output is rounded to bf16 once, to nearest even, on store — the "opmath" rule of
// PyTorch's bf16 kernels. A row's intermediates are never stored in bf16 (the f32 softmax
// keeps them in its output buffer; the bf16 one recomputes them instead). AdamW runs on the
// f32 master weights only.

#include <cuda_bf16.h>

typedef unsigned long long u64;

// The arithmetic type of an element type, and whether intermediates may be kept in the
// element type itself (wide) or must stay in registers (bf16).
template <typename T> struct Elem {
    typedef T acc;
    static constexpr bool wide = true;
};
template <> struct Elem<__nv_bfloat16> {
    typedef float acc;
    static constexpr bool wide = false;
};

// Load into the arithmetic type; store from it (bf16: round to nearest even).
__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void st(float& d, float v) { d = v; }
__device__ __forceinline__ void st(double& d, double v) { d = v; }
__device__ __forceinline__ void st(__nv_bfloat16& d, float v) { d = __float2bfloat16_rn(v); }

// SplitMix64's increment and output function: element i of a stream seeded with s is
// finalize(s + (i + 1) * GAMMA), exactly as `train_ops::stream_u64` on the CPU, so a CUDA
// mask equals the CPU's mask for the same seed.
#define GAMMA 0x9e3779b97f4a7c15ULL

__device__ __forceinline__ u64 splitmix_finalize(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// y[i] = 0 where the 53-bit draw of element i is below `threshold`, else x[i] * keep.
template <typename T>
__device__ void dropout(const T* x, T* y, u64 n, u64 seed, u64 threshold,
                        typename Elem<T>::acc keep) {
    typedef typename Elem<T>::acc A;
    u64 stride = (u64)blockDim.x * gridDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 bits = splitmix_finalize(seed + (i + 1) * GAMMA) >> 11;
        st(y[i], bits < threshold ? (A)0 : ld(x[i]) * keep);
    }
}

#define DROPOUT(NAME, T, A)                                                                \
    extern "C" __global__ void NAME(const T* x, T* y, u64 n, u64 seed, u64 threshold,      \
                                    A keep) {                                              \
        dropout<T>(x, y, n, seed, threshold, keep);                                        \
    }
DROPOUT(juris_dropout_f32, float, float)
DROPOUT(juris_dropout_f64, double, double)
DROPOUT(juris_dropout_bf16, __nv_bfloat16, float)

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// softmax(x · scale + mask) over rows of n: x is [d0, d1, d2, n] packed; the mask (in the
// arithmetic type: an f32 mask for bf16 scores, so −∞ and −1e30 stay what they are) is read
// through its own strides (s0..s3, 0 on broadcast dimensions) from `moff`. A row whose keys
// are all −∞ gives NaN, as the CPU form and the composed candle ops do.
template <typename T>
__device__ void masked_softmax(const T* x, const typename Elem<T>::acc* mask, T* y, u64 rows,
                               u64 n, u64 d1, u64 d2, u64 moff, u64 s0, u64 s1, u64 s2, u64 s3,
                               typename Elem<T>::acc scale) {
    typedef typename Elem<T>::acc A;
    u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    unsigned lane = threadIdx.x % 32;
    if (warp >= rows) return;
    u64 r = warp;
    u64 i0 = r / (d1 * d2), i1 = (r / d2) % d1, i2 = r % d2;
    const T* xr = x + r * n;
    const A* mr = mask + moff + i0 * s0 + i1 * s1 + i2 * s2;
    T* yr = y + r * n;
    A mx = -INFINITY;
    if constexpr (Elem<T>::wide) {
        // The shifted scores and then the exponentials live in the output row.
        for (u64 j = lane; j < n; j += 32) {
            A z = xr[j] * scale + mr[j * s3];
            yr[j] = z;
            mx = max(mx, z);
        }
        mx = warp_max(mx);
        A sum = 0;
        for (u64 j = lane; j < n; j += 32) {
            A e = exp(yr[j] - mx);
            yr[j] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        for (u64 j = lane; j < n; j += 32) yr[j] = yr[j] / sum;
    } else {
        // Storing them in bf16 would round each one: recompute them in f32 instead.
        for (u64 j = lane; j < n; j += 32) mx = max(mx, ld(xr[j]) * scale + mr[j * s3]);
        mx = warp_max(mx);
        A sum = 0;
        for (u64 j = lane; j < n; j += 32) sum += exp(ld(xr[j]) * scale + mr[j * s3] - mx);
        sum = warp_sum(sum);
        for (u64 j = lane; j < n; j += 32)
            st(yr[j], exp(ld(xr[j]) * scale + mr[j * s3] - mx) / sum);
    }
}

#define MASKED_SOFTMAX(NAME, T, A)                                                         \
    extern "C" __global__ void NAME(const T* x, const A* mask, T* y, u64 rows, u64 n,      \
                                    u64 d1, u64 d2, u64 moff, u64 s0, u64 s1, u64 s2,      \
                                    u64 s3, A scale) {                                     \
        masked_softmax<T>(x, mask, y, rows, n, d1, d2, moff, s0, s1, s2, s3, scale);       \
    }
MASKED_SOFTMAX(juris_masked_softmax_f32, float, float)
MASKED_SOFTMAX(juris_masked_softmax_f64, double, double)
MASKED_SOFTMAX(juris_masked_softmax_bf16, __nv_bfloat16, float)

// A row's mean (0 unless centred) and sqrt(mean((x − mean)²) + eps), two passes, over the
// 32 lanes of a warp: the statistics of the norm forward and backward.
template <typename T, typename A>
__device__ __forceinline__ void row_stats(const T* xr, u64 n, unsigned lane, int centred, A eps,
                                          A& mean, A& denom) {
    mean = 0;
    if (centred) {
        A s = 0;
        for (u64 j = lane; j < n; j += 32) s += ld(xr[j]);
        mean = warp_sum(s) / (A)n;
    }
    A sq = 0;
    for (u64 j = lane; j < n; j += 32) {
        A d = ld(xr[j]) - mean;
        sq += d * d;
    }
    denom = sqrt(warp_sum(sq) / (A)n + eps);
}

// LayerNorm (centred != 0, with bias b) or RMSNorm (centred == 0: b is not read) over rows
// of n with weight w: y = (x − mean) / sqrt(mean((x − mean)²) + eps) · w (+ b), the CPU form's
// two-pass statistics.
template <typename T>
__device__ void frozen_norm(const T* x, const T* w, const T* b, T* y, u64 rows, u64 n,
                            int centred, typename Elem<T>::acc eps) {
    typedef typename Elem<T>::acc A;
    u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    unsigned lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const T* xr = x + warp * n;
    T* yr = y + warp * n;
    A mean, denom;
    row_stats(xr, n, lane, centred, eps, mean, denom);
    for (u64 j = lane; j < n; j += 32) {
        A v = (ld(xr[j]) - mean) / denom * ld(w[j]);
        st(yr[j], centred ? v + ld(b[j]) : v);
    }
}

#define FROZEN_NORM(NAME, T, A)                                                            \
    extern "C" __global__ void NAME(const T* x, const T* w, const T* b, T* y, u64 rows,    \
                                    u64 n, int centred, A eps) {                           \
        frozen_norm<T>(x, w, b, y, rows, n, centred, eps);                                 \
    }
FROZEN_NORM(juris_frozen_norm_f32, float, float)
FROZEN_NORM(juris_frozen_norm_f64, double, double)
FROZEN_NORM(juris_frozen_norm_bf16, __nv_bfloat16, float)

// One AdamW update (`adamw.rs`): out = [p', m', v'] (3n) from p, g and st = [m, v] (2n). Every
// operation is written as its correctly rounded intrinsic so that nvcc contracts nothing into
// a fused multiply-add: each line is one candle op of the composed form the CPU also runs
// (`x * c + 0` is candle's affine(c, 0), which turns -0 into +0), so the result equals the
// CPU's bit for bit. f32 and f64 only: mixed-precision training keeps f32 master weights and
// f32 moments, and casts its gradients to f32 before they get here.
__device__ __forceinline__ float rn_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float rn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float rn_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float rn_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float rn_sqrt(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double rn_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double rn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double rn_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double rn_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double rn_sqrt(double a) { return __dsqrt_rn(a); }

template <typename T>
__device__ void adamw(const T* p, const T* g, const T* st, T* out, u64 n, int scaled, T beta1,
                      T one_minus_beta1, T beta2, T one_minus_beta2, T inv_bc1, T inv_bc2,
                      T eps, T decay, T lr, T grad_scale) {
    const T z = (T)0;
    u64 stride = (u64)blockDim.x * gridDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T gi = scaled ? rn_add(rn_mul(g[i], grad_scale), z) : g[i];
        T m = rn_add(rn_add(rn_mul(st[i], beta1), z), rn_add(rn_mul(gi, one_minus_beta1), z));
        T v = rn_add(rn_add(rn_mul(st[n + i], beta2), z),
                     rn_add(rn_mul(rn_mul(gi, gi), one_minus_beta2), z));
        T denom = rn_add(rn_sqrt(rn_add(rn_mul(v, inv_bc2), z)), eps);
        T decayed = rn_add(rn_mul(p[i], decay), z);
        T upd = rn_add(rn_mul(rn_div(rn_add(rn_mul(m, inv_bc1), z), denom), lr), z);
        out[i] = rn_sub(decayed, upd);
        out[n + i] = m;
        out[2 * n + i] = v;
    }
}

#define ADAMW(NAME, T)                                                                         \
    extern "C" __global__ void NAME(const T* p, const T* g, const T* st, T* out, u64 n,        \
                                    int scaled, T beta1, T one_minus_beta1, T beta2,           \
                                    T one_minus_beta2, T inv_bc1, T inv_bc2, T eps, T decay,   \
                                    T lr, T grad_scale) {                                      \
        adamw<T>(p, g, st, out, n, scaled, beta1, one_minus_beta1, beta2, one_minus_beta2,     \
                 inv_bc1, inv_bc2, eps, decay, lr, grad_scale);                                \
    }
ADAMW(juris_adamw_f32, float)
ADAMW(juris_adamw_f64, double)

// Backward of softmax(scores · scale + mask) from its output p and the gradient g, rows of n:
// dx = p ⊙ (g − Σ g ⊙ p) · scale, one warp per row.
template <typename T>
__device__ void softmax_grad(const T* p, const T* g, T* y, u64 rows, u64 n,
                             typename Elem<T>::acc scale) {
    typedef typename Elem<T>::acc A;
    u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    unsigned lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const T* pr = p + warp * n;
    const T* gr = g + warp * n;
    T* yr = y + warp * n;
    A dot = 0;
    for (u64 j = lane; j < n; j += 32) dot += ld(gr[j]) * ld(pr[j]);
    dot = warp_sum(dot);
    for (u64 j = lane; j < n; j += 32) st(yr[j], ld(pr[j]) * (ld(gr[j]) - dot) * scale);
}

#define SOFTMAX_GRAD(NAME, T, A)                                                           \
    extern "C" __global__ void NAME(const T* p, const T* g, T* y, u64 rows, u64 n, A scale) { \
        softmax_grad<T>(p, g, y, rows, n, scale);                                          \
    }
SOFTMAX_GRAD(juris_softmax_grad_f32, float, float)
SOFTMAX_GRAD(juris_softmax_grad_f64, double, double)
SOFTMAX_GRAD(juris_softmax_grad_bf16, __nv_bfloat16, float)

// Backward of LayerNorm (centred != 0) / RMSNorm with frozen weight w, from the input x and
// the gradient g, rows of n: dx = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)), ĝ = g ⊙ w,
// x̂ = x_c · r, r = 1 / sqrt(mean(x_c²) + eps), the mean(ĝ) term only when centred.
template <typename T>
__device__ void norm_grad(const T* x, const T* g, const T* w, T* y, u64 rows, u64 n,
                          int centred, typename Elem<T>::acc eps) {
    typedef typename Elem<T>::acc A;
    u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    unsigned lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const T* xr = x + warp * n;
    const T* gr = g + warp * n;
    T* yr = y + warp * n;
    A mean, denom;
    row_stats(xr, n, lane, centred, eps, mean, denom);
    A r = (A)1 / denom;
    A gsum = 0;
    for (u64 j = lane; j < n; j += 32) gsum += ld(gr[j]) * ld(w[j]);
    A gmean = centred ? warp_sum(gsum) / (A)n : (A)0;
    A cross = 0;
    for (u64 j = lane; j < n; j += 32) cross += ld(gr[j]) * ld(w[j]) * (ld(xr[j]) - mean) * r;
    cross = warp_sum(cross) / (A)n;
    for (u64 j = lane; j < n; j += 32) {
        A xhat = (ld(xr[j]) - mean) * r;
        st(yr[j], r * (ld(gr[j]) * ld(w[j]) - gmean - xhat * cross));
    }
}

#define NORM_GRAD(NAME, T, A)                                                              \
    extern "C" __global__ void NAME(const T* x, const T* g, const T* w, T* y, u64 rows,    \
                                    u64 n, int centred, A eps) {                           \
        norm_grad<T>(x, g, w, y, rows, n, centred, eps);                                   \
    }
NORM_GRAD(juris_norm_grad_f32, float, float)
NORM_GRAD(juris_norm_grad_f64, double, double)
NORM_GRAD(juris_norm_grad_bf16, __nv_bfloat16, float)

// Exact GELU, 0.5 x (1 + erf(x / √2)), and its slope Φ(x) + x φ(x) (Φ the normal CDF, φ its
// density), in the arithmetic type.
__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}
__device__ __forceinline__ float gelu_slope(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
           x * 0.39894228040143268f * expf(-0.5f * x * x);
}
__device__ __forceinline__ double gelu_slope(double x) {
    return 0.5 * (1.0 + erf(x * 0.70710678118654752)) + x * 0.39894228040143268 * exp(-0.5 * x * x);
}

// The GELU training node's forward for bf16 (f32 and f64 use candle's own kernel, so that
// they equal `Tensor::gelu_erf` bit for bit): computed in f32, rounded once.
extern "C" __global__ void juris_gelu_erf_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, u64 n) {
    u64 stride = (u64)blockDim.x * gridDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        st(y[i], gelu_erf(ld(x[i])));
}

// Backward of exact GELU from its input x and the gradient g: g · GELU′(x).
#define GELU_GRAD(NAME, T)                                                                 \
    extern "C" __global__ void NAME(const T* x, const T* g, T* y, u64 n) {                 \
        u64 stride = (u64)blockDim.x * gridDim.x;                                          \
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)       \
            st(y[i], ld(g[i]) * gelu_slope(ld(x[i])));                                     \
    }
GELU_GRAD(juris_gelu_grad_f32, float)
GELU_GRAD(juris_gelu_grad_f64, double)
GELU_GRAD(juris_gelu_grad_bf16, __nv_bfloat16)
