// Device side of csrc/cuda/spacetime_attention_time.cu: parameters, shared
// memory layout and the forward / backward kernels (algorithm described there).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace vpengine {
namespace sta {

constexpr int64_t kMaxFrames = 32;
constexpr int64_t kMaxHeadDim = 128;
constexpr float kNeg = -2.381976325e38f;  // fp32(-0.7 * float32_max), VideoPrism's mask value

struct Strides {
  int64_t b, t, s;  // element strides of batch, frame, token (channel stride is 1)
};

struct Params {
  int64_t num_seqs, S, H;  // num_seqs = B*S*H
  int T, E;
  float scale, cap, inv_cap;  // cap = 0: no soft cap
  Strides qkv, grad;
  const float* pad;  // [B, T] contiguous fp32, or null
};

inline Params make_params(int64_t B, int64_t T, int64_t S, int64_t H, int64_t E, double softcap, Strides qkv,
                          const float* pad) {
  Params p{};
  p.num_seqs = B * S * H;
  p.S = S;
  p.H = H;
  p.T = static_cast<int>(T);
  p.E = static_cast<int>(E);
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(E)));
  p.cap = softcap > 0 ? static_cast<float>(softcap) : 0.f;
  p.inv_cap = softcap > 0 ? static_cast<float>(1.0 / softcap) : 0.f;
  p.qkv = qkv;
  p.grad = qkv;
  p.pad = pad;
  return p;
}

// A shared-memory row of E elements, padded to 16 bytes past a multiple of 128:
// rows of consecutive sequences (TP rows apart) then start in distinct banks.
template <typename T>
__host__ __device__ inline int row_bytes(int E) {
  return ((E * static_cast<int>(sizeof(T)) + 127) / 128) * 128 + 16;
}

// Per warp: two buffers of 32 rows (K and V; the backward reloads them with q
// and dO), plus p and ds (32 rows of TP + 1 floats each) in the backward.
template <typename T, int TP>
__host__ __device__ inline int64_t warp_smem_bytes(int E, bool backward) {
  return 2 * 32 * static_cast<int64_t>(row_bytes<T>(E)) + (backward ? 2 * 32 * (TP + 1) * 4 : 0);
}

template <typename T>
struct Vec {
  static constexpr int N = 16 / sizeof(T);  // elements per 16-byte vector
};

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&x)[Vec<T>::N]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < Vec<T>::N; ++i) x[i] = static_cast<float>(e[i]);
}

template <typename T>
__device__ __forceinline__ uint4 pack(const float (&x)[Vec<T>::N]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < Vec<T>::N; ++i) e[i] = T(x[i]);
  return raw;
}

template <typename T>
__device__ __forceinline__ void load_global(const T* p, float (&x)[Vec<T>::N]) {
  unpack<T>(__ldg(reinterpret_cast<const uint4*>(p)), x);
}

template <typename T>
__device__ __forceinline__ void load_shared(const unsigned char* row, int c, float (&x)[Vec<T>::N]) {
  unpack<T>(*reinterpret_cast<const uint4*>(row + c * sizeof(T)), x);
}

template <typename T>
__device__ __forceinline__ float dot(const float (&a)[Vec<T>::N], const float (&b)[Vec<T>::N]) {
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < Vec<T>::N; ++i) acc = fmaf(a[i], b[i], acc);
  return acc;
}

// The whole warp copies rows (g, j) = (row / TP, row % TP) of its 32/TP
// sequences into shared memory: src + base_g + j * frame_stride, where base_g is
// lane g*TP's `base`. Trip count is the same for every lane (for the shuffles).
template <typename T, int TP>
__device__ __forceinline__ void load_rows(const T* src, int64_t base, int64_t frame_stride, bool seq_ok, int T_,
                                          int E, unsigned char* buf, int lane) {
  constexpr int V = Vec<T>::N;
  const int nv = E / V;
  const int row_b = row_bytes<T>(E);
  for (int k = 0; k < nv; ++k) {
    const int idx = lane + 32 * k;
    const int row = idx / nv;
    const int v = idx - row * nv;
    const int leader = (row / TP) * TP;
    const int64_t b = __shfl_sync(0xffffffffu, base, leader);
    const bool ok = __shfl_sync(0xffffffffu, static_cast<int>(seq_ok), leader) != 0;
    const int j = row % TP;
    if (ok && j < T_) {
      const uint4 val = __ldg(reinterpret_cast<const uint4*>(src + b + j * frame_stride + v * V));
      *reinterpret_cast<uint4*>(buf + row * row_b + v * 16) = val;
    }
  }
}

struct Seq {
  int64_t b, s, h;
  bool ok;
};

__device__ __forceinline__ Seq sequence_of(int64_t n, const Params& p) {
  Seq q{0, 0, 0, n < p.num_seqs};
  if (q.ok) {
    q.h = n % p.H;
    q.s = (n / p.H) % p.S;
    q.b = n / (p.H * p.S);
  }
  return q;
}

// The official mask keeps key frame j where pad <= 0.5: a NaN padding drops it.
__device__ __forceinline__ bool padded_key(int64_t b, int j, const Params& p) {
  return p.pad != nullptr && !(p.pad[b * p.T + j] <= 0.5f);
}

// Masked (NEG), capped logit of score s for key frame j of sample b; th gets tanh.
__device__ __forceinline__ float logit(float s, int64_t b, int j, const Params& p, float* th) {
  float z = s * p.scale;
  *th = 0.f;
  if (p.cap > 0.f) {
    *th = tanhf(z * p.inv_cap);
    z = p.cap * *th;
  }
  if (padded_key(b, j, p)) z = kNeg;
  return z;
}

template <typename T, int TP>
__global__ void __launch_bounds__(128)
    time_attention_fwd_kernel(const T* __restrict__ qkv, T* __restrict__ out, float* __restrict__ lse, Params p) {
  constexpr int V = Vec<T>::N;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int rb = row_bytes<T>(p.E);
  unsigned char* kbuf = smem + warp * warp_smem_bytes<T, TP>(p.E, false);
  unsigned char* vbuf = kbuf + 32 * rb;
  const int g = lane / TP, t = lane % TP;
  const Seq sq = sequence_of((static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp) * (32 / TP) + g, p);
  const int64_t HE = p.H * p.E;
  const int64_t base = sq.b * p.qkv.b + sq.s * p.qkv.s + sq.h * p.E;
  load_rows<T, TP>(qkv + HE, base, p.qkv.t, sq.ok, p.T, p.E, kbuf, lane);
  load_rows<T, TP>(qkv + 2 * HE, base, p.qkv.t, sq.ok, p.T, p.E, vbuf, lane);
  __syncwarp();
  if (!sq.ok || t >= p.T) return;

  float sc[TP];
#pragma unroll
  for (int j = 0; j < TP; ++j) sc[j] = 0.f;
  const T* q = qkv + base + t * p.qkv.t;
  #pragma unroll 2  // two q (dO, o) vectors in flight per lane
  for (int c = 0; c < p.E; c += V) {
    float qv[V], kv[V];
    load_global<T>(q + c, qv);
#pragma unroll
    for (int j = 0; j < TP; ++j) {
      if (j < p.T) {
        load_shared<T>(kbuf + (g * TP + j) * rb, c, kv);
        sc[j] += dot<T>(qv, kv);
      }
    }
  }
  float m = -INFINITY, th;
#pragma unroll
  for (int j = 0; j < TP; ++j) {
    if (j < p.T) {
      sc[j] = logit(sc[j], sq.b, j, p, &th);
      m = fmaxf(m, sc[j]);
    }
  }
  // All keys padded: m = NEG, every p = 1 before normalization (uniform row).
  float l = 0.f;
#pragma unroll
  for (int j = 0; j < TP; ++j) {
    if (j < p.T) {
      sc[j] = expf(sc[j] - m);
      l += sc[j];
    }
  }
  const int64_t row = (sq.b * p.T + t) * p.S + sq.s;
  lse[row * p.H + sq.h] = m + logf(l);  // NEG + log(T) rounds to NEG, as in the reference
  const float inv_l = 1.f / l;
  T* o = out + row * HE + sq.h * p.E;
  for (int c = 0; c < p.E; c += V) {
    float acc[V], vv[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = 0.f;
#pragma unroll
    for (int j = 0; j < TP; ++j) {
      if (j < p.T) {
        load_shared<T>(vbuf + (g * TP + j) * rb, c, vv);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = fmaf(sc[j], vv[i], acc[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] *= inv_l;
    *reinterpret_cast<uint4*>(o + c) = pack<T>(acc);
  }
}

template <typename T, int TP>
__global__ void __launch_bounds__(128)
    time_attention_bwd_kernel(const T* __restrict__ qkv, const T* __restrict__ out, const T* __restrict__ dout,
                              const float* __restrict__ lse, T* __restrict__ grad, Params p) {
  constexpr int V = Vec<T>::N;
  constexpr int PS = TP + 1;  // odd row stride of p / ds: conflict-free row and column access
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int rb = row_bytes<T>(p.E);
  unsigned char* abuf = smem + warp * warp_smem_bytes<T, TP>(p.E, true);
  unsigned char* bbuf = abuf + 32 * rb;
  float* P = reinterpret_cast<float*>(bbuf + 32 * rb);
  float* DS = P + 32 * PS;
  const int g = lane / TP, t = lane % TP;
  const Seq sq = sequence_of((static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp) * (32 / TP) + g, p);
  const bool row_ok = sq.ok && t < p.T;
  const int64_t HE = p.H * p.E;
  const int64_t base = sq.b * p.qkv.b + sq.s * p.qkv.s + sq.h * p.E;
  const int64_t obase = (sq.b * p.T * p.S + sq.s) * HE + sq.h * p.E;  // out / dO: contiguous [B,T,S,H*E]
  const int64_t ostride = p.S * HE;
  const int64_t gbase = sq.b * p.grad.b + sq.s * p.grad.s + sq.h * p.E;

  // Phase 1, lane = query frame t: p, ds and dq, with K (abuf) and V (bbuf).
  load_rows<T, TP>(qkv + HE, base, p.qkv.t, sq.ok, p.T, p.E, abuf, lane);
  load_rows<T, TP>(qkv + 2 * HE, base, p.qkv.t, sq.ok, p.T, p.E, bbuf, lane);
  __syncwarp();
  if (row_ok) {
    float sc[TP], dp[TP], delta = 0.f;
#pragma unroll
    for (int j = 0; j < TP; ++j) sc[j] = dp[j] = 0.f;
    const T* q = qkv + base + t * p.qkv.t;
    const T* d = dout + obase + t * ostride;
    #pragma unroll 2  // two q (dO) vectors in flight per lane
    for (int c = 0; c < p.E; c += V) {
      float qv[V], dv[V], kv[V];
      load_global<T>(q + c, qv);
      load_global<T>(d + c, dv);
#pragma unroll
      for (int j = 0; j < TP; ++j) {
        if (j < p.T) {
          load_shared<T>(abuf + (g * TP + j) * rb, c, kv);
          sc[j] += dot<T>(qv, kv);
          load_shared<T>(bbuf + (g * TP + j) * rb, c, kv);
          dp[j] += dot<T>(dv, kv);
        }
      }
    }
    const float L = lse[((sq.b * p.T + t) * p.S + sq.s) * p.H + sq.h];
    const bool masked = L < -1.0e38f;  // every key padded: uniform p, no gradient into q or k
    const float inv_t = 1.f / static_cast<float>(p.T);
    // 16-bit T: delta = dO . o = sum_j p_j dp_j, from the fp32 p and dp of
    // this lane's whole row rather than from o rounded to T: that rounding
    // does not cancel against dp at the row's dominant key (the Triton
    // kernel's fp16 gradient reached 15x plain PyTorch's error that way near
    // the cap). An fp32 o is exact enough, and p's own rounding (from the
    // saved lse, which scales a whole row) would cost more there.
    bool from_o = std::is_same<T, float>::value;
    if (!from_o) {
#pragma unroll
      for (int j = 0; j < TP; ++j) {
        if (j < p.T) {
          float th;
          const float z = logit(sc[j], sq.b, j, p, &th);
          delta = fmaf(masked ? inv_t : expf(z - L), dp[j], delta);
        }
      }
      from_o = !isfinite(delta);
    }
    if (from_o) {
      // fp32, or a non-finite operand, which makes the sum above NaN where
      // dO . o may be inf: such rows read o, so the gradient's NaN/inf
      // pattern stays the reference's.
      const T* o = out + obase + t * ostride;
      delta = 0.f;
      for (int c = 0; c < p.E; c += V) {
        float dv[V], ov[V];
        load_global<T>(d + c, dv);
        load_global<T>(o + c, ov);
        delta += dot<T>(dv, ov);
      }
    }
#pragma unroll
    for (int j = 0; j < TP; ++j) {
      if (j < p.T) {
        float th;
        const float z = logit(sc[j], sq.b, j, p, &th);
        const float pj = masked ? inv_t : expf(z - L);
        // A padded key's logit is a constant: no gradient, even where delta
        // is NaN (0 * NaN), before the tanh factor, as the reference orders it.
        float ds = masked || padded_key(sq.b, j, p) ? 0.f : pj * (dp[j] - delta);
        if (p.cap > 0.f) ds *= 1.f - th * th;
        P[lane * PS + j] = pj;
        DS[lane * PS + j] = ds;
        sc[j] = ds;
      }
    }
    T* dq = grad + gbase + t * p.grad.t;
    for (int c = 0; c < p.E; c += V) {
      float acc[V], kv[V];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = 0.f;
#pragma unroll
      for (int j = 0; j < TP; ++j) {
        if (j < p.T) {
          load_shared<T>(abuf + (g * TP + j) * rb, c, kv);
#pragma unroll
          for (int i = 0; i < V; ++i) acc[i] = fmaf(sc[j], kv[i], acc[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] *= p.scale;
      *reinterpret_cast<uint4*>(dq + c) = pack<T>(acc);
    }
  }
  __syncwarp();

  // Phase 2, lane = key frame j (= t): dk and dv, with q (abuf) and dO (bbuf).
  load_rows<T, TP>(qkv, base, p.qkv.t, sq.ok, p.T, p.E, abuf, lane);
  load_rows<T, TP>(dout, obase, ostride, sq.ok, p.T, p.E, bbuf, lane);
  __syncwarp();
  if (!row_ok) return;
  const int j = t;
  T* dk = grad + gbase + j * p.grad.t + HE;
  T* dvp = dk + HE;
  for (int c = 0; c < p.E; c += V) {
    float ak[V], av[V], x[V];
#pragma unroll
    for (int i = 0; i < V; ++i) ak[i] = av[i] = 0.f;
#pragma unroll
    for (int tq = 0; tq < TP; ++tq) {
      if (tq < p.T) {
        const float pj = P[(g * TP + tq) * PS + j];
        const float ds = DS[(g * TP + tq) * PS + j];
        load_shared<T>(bbuf + (g * TP + tq) * rb, c, x);
#pragma unroll
        for (int i = 0; i < V; ++i) av[i] = fmaf(pj, x[i], av[i]);
        load_shared<T>(abuf + (g * TP + tq) * rb, c, x);
#pragma unroll
        for (int i = 0; i < V; ++i) ak[i] = fmaf(ds, x[i], ak[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) ak[i] *= p.scale;
    *reinterpret_cast<uint4*>(dk + c) = pack<T>(ak);
    *reinterpret_cast<uint4*>(dvp + c) = pack<T>(av);
  }
}

}  // namespace sta
}  // namespace vpengine
