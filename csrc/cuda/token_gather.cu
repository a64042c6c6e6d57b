// CUDA kernel of vpengine::token_gather_native (schema in csrc/cpu/token_gather.cpp).
//
// Legend: B batch, N tokens, K kept tokens, D width.
//
//   out_BKD[b, k, :] = x_BND[b, keep_idx_BK[b, k], :]
//
// Traffic: reads B*K*D*itemsize bytes of x plus 8*B*K bytes of indices,
// writes B*K*D*itemsize. VideoPrism-B stage 2 (B=32, K=1024 of N=4096, D=768,
// bf16): 50 MB read + 50 MB written, about 33 us at the H100's ~3.0 TB/s copy
// bandwidth, so the kernel is a pure copy: one warp per output row, each lane
// moving 16-byte vectors (4 in flight per lane before the stores) when every
// row start is 16-byte aligned, narrower vectors otherwise. The copy is on
// bytes, so one instantiation per vector width serves every dtype.
//
// Out-of-range indices never read out of bounds: the kernel always checks
// 0 <= index < N and writes a zero row instead (an illegal address would
// poison the CUDA context for the whole process). With VPENGINE_CHECK_INDICES=1
// it also records the first bad row in a device flag (atomicMin) and the host
// reads the flag after the launch and raises ValueError naming the index; that
// costs one stream sync, so it is a debugging/test mode, skipped while a CUDA
// graph is being captured (a sync is illegal there).
//
// Only c10/cuda headers (no ATen/cuda/CUDAContext.h): that header pulls in
// cuBLAS/cuSPARSE headers that a pip-style toolkit does not ship.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace vpengine {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kUnroll = 4;  // vectors in flight per lane: hides DRAM latency on short rows
constexpr unsigned long long kNoBadRow = ~0ull;

template <typename Vec>
__global__ void __launch_bounds__(kThreads) token_gather_kernel(
    const Vec* __restrict__ src, Vec* __restrict__ dst, const int64_t* __restrict__ idx_BK,
    int64_t num_rows, int64_t K, int64_t N, int64_t row_vecs, int64_t stride_b_vecs,
    int64_t stride_n_vecs, unsigned long long* __restrict__ bad_row) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       r < num_rows; r += warps_total) {
    const int64_t n = idx_BK[r];  // same address for the whole warp: one broadcast load
    Vec* out = dst + r * row_vecs;
    if (n < 0 || n >= N) {
      if (lane == 0 && bad_row != nullptr) {
        atomicMin(bad_row, static_cast<unsigned long long>(r));
      }
      for (int64_t v = lane; v < row_vecs; v += 32) {
        out[v] = Vec{};
      }
      continue;
    }
    const Vec* in = src + (r / K) * stride_b_vecs + n * stride_n_vecs;
    for (int64_t v0 = lane; v0 < row_vecs; v0 += 32 * kUnroll) {
      Vec buf[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + 32 * u;
        if (v < row_vecs) buf[u] = in[v];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + 32 * u;
        if (v < row_vecs) out[v] = buf[u];
      }
    }
  }
}

// Same messages as the CPU/Meta checks in csrc/cpu/token_gather.cpp (this
// library does not link against that one).
void check_args(const at::Tensor& x_BND, const at::Tensor& keep_idx_BK) {
  TORCH_CHECK_VALUE(
      x_BND.dim() == 3, "token_gather_native: x must be 3-D [B, N, D]; got shape ", x_BND.sizes());
  TORCH_CHECK_VALUE(
      keep_idx_BK.dim() == 2, "token_gather_native: keep_idx must be 2-D [B, K]; got shape ",
      keep_idx_BK.sizes());
  TORCH_CHECK_VALUE(
      keep_idx_BK.scalar_type() == at::kLong, "token_gather_native: keep_idx must be int64; got ",
      keep_idx_BK.scalar_type());
  TORCH_CHECK_VALUE(
      keep_idx_BK.size(0) == x_BND.size(0), "token_gather_native: keep_idx has batch ",
      keep_idx_BK.size(0), " but x has batch ", x_BND.size(0));
  TORCH_CHECK_VALUE(
      keep_idx_BK.device() == x_BND.device(), "token_gather_native: keep_idx is on ",
      keep_idx_BK.device(), " but x is on ", x_BND.device());
}

bool check_indices_enabled() {
  const char* env = std::getenv("VPENGINE_CHECK_INDICES");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

// Widest copy unit (bytes) that divides every row start and the row length.
int vector_bytes(uintptr_t src, uintptr_t dst, int64_t row_bytes, int64_t stride_b, int64_t stride_n) {
  for (int v : {16, 8, 4, 2}) {
    if (src % v == 0 && dst % v == 0 && row_bytes % v == 0 && stride_b % v == 0 && stride_n % v == 0) {
      return v;
    }
  }
  return 1;
}

template <typename Vec>
void launch(const char* src, char* dst, const int64_t* idx, int64_t num_rows, int64_t K, int64_t N,
            int64_t row_bytes, int64_t stride_b, int64_t stride_n, unsigned long long* bad_row,
            cudaStream_t stream) {
  constexpr int64_t v = sizeof(Vec);
  // Grid-stride loop: cap the grid, keep every warp busy on large B*K.
  const int64_t blocks = std::min<int64_t>((num_rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1 << 20);
  token_gather_kernel<Vec><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      reinterpret_cast<const Vec*>(src), reinterpret_cast<Vec*>(dst), idx, num_rows, K, N,
      row_bytes / v, stride_b / v, stride_n / v, bad_row);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor token_gather_cuda(const at::Tensor& x_BND_in, const at::Tensor& keep_idx_BK_in) {
  check_args(x_BND_in, keep_idx_BK_in);
  const c10::cuda::CUDAGuard guard(x_BND_in.device());
  const at::Tensor keep_idx_BK = keep_idx_BK_in.contiguous();
  const int64_t B = x_BND_in.size(0);
  const int64_t N = x_BND_in.size(1);
  const int64_t D = x_BND_in.size(2);
  const int64_t K = keep_idx_BK.size(1);
  at::Tensor out_BKD = at::empty({B, K, D}, x_BND_in.options());
  if (B * K * D == 0) {
    return out_BKD;
  }
  // Rows must be contiguous; batch and token strides may be anything.
  const at::Tensor x_BND = x_BND_in.stride(2) == 1 ? x_BND_in : x_BND_in.contiguous();
  const int64_t item = static_cast<int64_t>(x_BND.element_size());
  const int64_t row_bytes = D * item;
  const int64_t stride_b = x_BND.stride(0) * item;
  const int64_t stride_n = x_BND.stride(1) * item;
  const char* src = static_cast<const char*>(x_BND.const_data_ptr());
  char* dst = static_cast<char*>(out_BKD.mutable_data_ptr());
  const int64_t* idx = keep_idx_BK.const_data_ptr<int64_t>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool checking = check_indices_enabled() && capture == cudaStreamCaptureStatusNone;
  at::Tensor flag;
  unsigned long long* bad_row = nullptr;
  if (checking) {
    flag = at::empty({1}, x_BND.options().dtype(at::kLong));
    bad_row = reinterpret_cast<unsigned long long*>(flag.mutable_data_ptr());
    C10_CUDA_CHECK(cudaMemsetAsync(bad_row, 0xFF, sizeof(unsigned long long), stream));
  }

  const int64_t rows = B * K;
  switch (vector_bytes(reinterpret_cast<uintptr_t>(src), reinterpret_cast<uintptr_t>(dst), row_bytes,
                       stride_b, stride_n)) {
    case 16: launch<uint4>(src, dst, idx, rows, K, N, row_bytes, stride_b, stride_n, bad_row, stream); break;
    case 8: launch<uint2>(src, dst, idx, rows, K, N, row_bytes, stride_b, stride_n, bad_row, stream); break;
    case 4: launch<uint32_t>(src, dst, idx, rows, K, N, row_bytes, stride_b, stride_n, bad_row, stream); break;
    case 2: launch<uint16_t>(src, dst, idx, rows, K, N, row_bytes, stride_b, stride_n, bad_row, stream); break;
    default: launch<uint8_t>(src, dst, idx, rows, K, N, row_bytes, stride_b, stride_n, bad_row, stream); break;
  }

  if (checking) {
    unsigned long long first_bad = kNoBadRow;
    C10_CUDA_CHECK(cudaMemcpyAsync(&first_bad, bad_row, sizeof(first_bad), cudaMemcpyDeviceToHost, stream));
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (first_bad != kNoBadRow) {
      const int64_t r = static_cast<int64_t>(first_bad);
      int64_t value = 0;
      C10_CUDA_CHECK(cudaMemcpyAsync(&value, idx + r, sizeof(value), cudaMemcpyDeviceToHost, stream));
      C10_CUDA_CHECK(cudaStreamSynchronize(stream));
      TORCH_CHECK_VALUE(
          false, "token_gather_native: keep_idx[", r / K, ", ", r % K, "] = ", value,
          " is out of range for x with N = ", N, " tokens (need 0 <= index < N)");
    }
  }
  return out_BKD;
}

}  // namespace
}  // namespace vpengine

TORCH_LIBRARY_IMPL(vpengine, CUDA, m) {
  m.impl("token_gather_native", &vpengine::token_gather_cuda);
}
