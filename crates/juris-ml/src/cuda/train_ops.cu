// CUDA forwards of the fused training ops of `train_ops.rs` (compiled to PTX by build.rs when
// the `cuda` feature is on). Each is one kernel reading the op's input where it lies and
// writing a fresh output: no device copies, no cuRAND generator, one launch per op.
//
// Row kernels give each row to one warp (32 lanes striding over the row, shuffles for the
// sums): the rows here are short (attention keys ≤ a few hundred, hidden sizes ≤ 2048) and
// numerous (batch × heads × queries), so a warp per row keeps every SM busy without shared
// memory.

typedef unsigned long long u64;

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
#define DROPOUT(NAME, T)                                                                   \
    extern "C" __global__ void NAME(const T* x, T* y, u64 n, u64 seed, u64 threshold,      \
                                    T keep) {                                              \
        u64 stride = (u64)blockDim.x * gridDim.x;                                          \
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {     \
            u64 bits = splitmix_finalize(seed + (i + 1) * GAMMA) >> 11;                    \
            y[i] = bits < threshold ? (T)0 : x[i] * keep;                                  \
        }                                                                                  \
    }
DROPOUT(juris_dropout_f32, float)
DROPOUT(juris_dropout_f64, double)

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

// softmax(x · scale + mask) over rows of n: x is [d0, d1, d2, n] packed; the mask is read
// through its own strides (s0..s3, 0 on broadcast dimensions) from `moff`. A row whose keys
// are all −∞ gives NaN, as the CPU form and the composed candle ops do.
template <typename T>
__device__ void masked_softmax(const T* x, const T* mask, T* y, u64 rows, u64 n, u64 d1,
                               u64 d2, u64 moff, u64 s0, u64 s1, u64 s2, u64 s3, T scale) {
    u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    unsigned lane = threadIdx.x % 32;
    if (warp >= rows) return;
    u64 r = warp;
    u64 i0 = r / (d1 * d2), i1 = (r / d2) % d1, i2 = r % d2;
    const T* xr = x + r * n;
    const T* mr = mask + moff + i0 * s0 + i1 * s1 + i2 * s2;
    T* yr = y + r * n;
    T mx = -INFINITY;
    for (u64 j = lane; j < n; j += 32) {
        T z = xr[j] * scale + mr[j * s3];
        yr[j] = z;
        mx = max(mx, z);
    }
    mx = warp_max(mx);
    T sum = 0;
    for (u64 j = lane; j < n; j += 32) {
        T e = exp(yr[j] - mx);
        yr[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    for (u64 j = lane; j < n; j += 32) yr[j] = yr[j] / sum;
}

#define MASKED_SOFTMAX(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T* x, const T* mask, T* y, u64 rows, u64 n,      \
                                    u64 d1, u64 d2, u64 moff, u64 s0, u64 s1, u64 s2,      \
                                    u64 s3, T scale) {                                     \
        masked_softmax<T>(x, mask, y, rows, n, d1, d2, moff, s0, s1, s2, s3, scale);       \
    }
MASKED_SOFTMAX(juris_masked_softmax_f32, float)
MASKED_SOFTMAX(juris_masked_softmax_f64, double)

// LayerNorm (centred != 0, with bias b) or RMSNorm (centred == 0: b is not read) over rows
// of n with weight w: y = (x − mean) / sqrt(mean((x − mean)²) + eps) · w (+ b), the CPU form's
// two-pass statistics.
template <typename T>
__device__ void frozen_norm(const T* x, const T* w, const T* b, T* y, u64 rows, u64 n,
                            int centred, T eps) {
    u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    unsigned lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const T* xr = x + warp * n;
    T* yr = y + warp * n;
    T mean = 0;
    if (centred) {
        T s = 0;
        for (u64 j = lane; j < n; j += 32) s += xr[j];
        mean = warp_sum(s) / (T)n;
    }
    T sq = 0;
    for (u64 j = lane; j < n; j += 32) {
        T d = xr[j] - mean;
        sq += d * d;
    }
    T denom = sqrt(warp_sum(sq) / (T)n + eps);
    for (u64 j = lane; j < n; j += 32) {
        T v = (xr[j] - mean) / denom * w[j];
        yr[j] = centred ? v + b[j] : v;
    }
}

#define FROZEN_NORM(NAME, T)                                                               \
    extern "C" __global__ void NAME(const T* x, const T* w, const T* b, T* y, u64 rows,    \
                                    u64 n, int centred, T eps) {                           \
        frozen_norm<T>(x, w, b, y, rows, n, centred, eps);                                 \
    }
FROZEN_NORM(juris_frozen_norm_f32, float)
FROZEN_NORM(juris_frozen_norm_f64, double)
