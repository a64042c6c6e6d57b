// CUDA kernels of vpengine::spacetime_attention_native and ..._backward_native
// for the time axis (schemas in csrc/cpu/spacetime_attention.cpp).
//
// Legend: B batch, T frames (T <= TP <= 32, TP a power of two), S tokens per
// frame, H heads, E head dim (multiple of 8, <= 128), C = 3*H*E.
//
// The time axis is N = B*S*H independent sequences of T frames: too short for
// a tiled flash kernel (a 64-row tile would be mostly padding). Here a warp
// holds 32/TP whole sequences, one lane per query frame, so no lane idles when
// T is a power of two:
//
//   forward, lane (g, t):  s_j = (q_t . k_j) * E**-0.5        j < T
//                          z_j = c * tanh(s_j / c), NEG at padded frames
//                          p_j = softmax(z)_j;  o_t = sum_j p_j v_j;  lse_t
//   backward, lane (g, t): p_j from lse; dp_j = dO_t . v_j; delta = sum_j p_j dp_j (= dO_t . o_t, unrounded)
//                          ds_j = p_j (dp_j - delta) (1 - tanh^2);  dq_t = scale sum_j ds_j k_j
//             lane (g, j): dv_j = sum_t p_tj dO_t;  dk_j = scale sum_t ds_tj q_t
//
// K and V rows of the warp's sequences sit in shared memory (in the input
// dtype; rows padded to 16 bytes mod 128 so the groups of a warp hit distinct
// banks) and are read as 16-byte vectors that the lanes of one sequence
// broadcast; each lane streams its own q (dO, o) row from global memory. The
// backward reuses the same buffers for q and dO in its second phase and keeps
// p and ds (TP x TP floats per sequence) in shared memory between the phases.
// A row whose keys are all padded has lse = NEG and is uniform (p = 1/T), as
// in the reference.
//
// Traffic: forward reads q, k, v and writes o (4 * N*T*E elements) plus the
// lse; backward reads q, k, v, o, dO and writes dq, dk, dv (8 units). At
// VideoPrism-B (32 clips, bf16) the forward moves ~805 MB: ~270 us at 3.0 TB/s.
// FLOPs are 4*T*E per row (~8 per byte at T = 16): memory-bound.
//
// Only c10/cuda headers (no ATen/cuda/CUDAContext.h, see toolchain notes).

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

#include "spacetime_attention_time.cuh"

namespace vpengine {
namespace {

using namespace sta;

// One launch of either pass. Warps per block are chosen so that a block stays
// under the 48 KiB of shared memory that needs no opt-in.
struct Launch {
  const void* qkv;
  const void* out;   // backward only
  const void* dout;  // backward only
  float* lse;        // written by forward, read by backward
  void* dst;         // forward: out; backward: grad qkv
  Params prm;
  cudaStream_t stream;

  template <typename T, int TP>
  dim3 grid_block(bool backward, int64_t* smem) const {
    const int64_t per_warp = warp_smem_bytes<T, TP>(prm.E, backward);
    const int64_t wpb = std::max<int64_t>(1, std::min<int64_t>(4, (48 * 1024) / per_warp));
    const int64_t warps = (prm.num_seqs + (32 / TP) - 1) / (32 / TP);
    *smem = wpb * per_warp;
    return dim3(static_cast<unsigned>((warps + wpb - 1) / wpb), static_cast<unsigned>(wpb * 32));
  }

  template <typename T, int TP>
  void forward() const {
    int64_t smem = 0;
    const dim3 gb = grid_block<T, TP>(false, &smem);
    time_attention_fwd_kernel<T, TP><<<gb.x, gb.y, smem, stream>>>(
        static_cast<const T*>(qkv), static_cast<T*>(dst), lse, prm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T, int TP>
  void backward() const {
    int64_t smem = 0;
    const dim3 gb = grid_block<T, TP>(true, &smem);
    time_attention_bwd_kernel<T, TP><<<gb.x, gb.y, smem, stream>>>(
        static_cast<const T*>(qkv), static_cast<const T*>(out), static_cast<const T*>(dout), lse,
        static_cast<T*>(dst), prm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_args(const at::Tensor& qkv, c10::string_view axis, int64_t num_heads,
                const std::optional<at::Tensor>& frame_paddings) {
  TORCH_CHECK_VALUE(qkv.dim() == 4, "spacetime_attention_native: qkv must be 4-D [B, T, S, 3*H*E]; got shape ",
                    qkv.sizes());
  TORCH_CHECK_VALUE(axis == "time", "spacetime_attention_native: only axis='time' has a native kernel; got '",
                    std::string(axis), "'");
  TORCH_CHECK_VALUE(num_heads > 0, "spacetime_attention_native: num_heads must be positive; got ", num_heads);
  TORCH_CHECK_VALUE(qkv.size(3) % (3 * num_heads) == 0, "spacetime_attention_native: qkv's last dim ", qkv.size(3),
                    " is not 3 * num_heads * E with num_heads = ", num_heads);
  const int64_t E = qkv.size(3) / (3 * num_heads);
  TORCH_CHECK_VALUE(E <= kMaxHeadDim && E % 8 == 0, "spacetime_attention_native: head dim E = ", E,
                    " must be a multiple of 8 and at most ", kMaxHeadDim);
  TORCH_CHECK_VALUE(qkv.size(1) <= kMaxFrames, "spacetime_attention_native: T = ", qkv.size(1),
                    " frames; the kernel keeps a sequence in one warp, T <= ", kMaxFrames);
  const auto dt = qkv.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                    "spacetime_attention_native: qkv must be float32, float16 or bfloat16; got ", dt);
  TORCH_CHECK_VALUE(qkv.is_cuda(), "spacetime_attention_native: qkv must be a CUDA tensor; got ", qkv.device());
  if (frame_paddings.has_value()) {
    const at::Tensor& pad = *frame_paddings;
    TORCH_CHECK_VALUE(pad.dim() == 2 && pad.size(0) == qkv.size(0) && pad.size(1) == qkv.size(1),
                      "spacetime_attention_native: frame_paddings must be [B, T] = [", qkv.size(0), ", ",
                      qkv.size(1), "]; got shape ", pad.sizes());
    TORCH_CHECK_VALUE(pad.device() == qkv.device(), "spacetime_attention_native: frame_paddings is on ",
                      pad.device(), " but qkv is on ", qkv.device());
  }
}

// 16-byte vectors need 16-byte aligned rows: channel stride 1, every other
// stride a multiple of the vector, an aligned base. Otherwise work on a copy.
bool vector_ready(const at::Tensor& x) {
  const int64_t vec = 16 / x.element_size();
  if (x.stride(3) != 1 || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (x.size(d) > 1 && x.stride(d) % vec != 0) return false;
  }
  return true;
}

at::Tensor vector_view(const at::Tensor& x) {
  if (vector_ready(x)) return x;
  at::Tensor c = x.contiguous();
  return vector_ready(c) ? c : c.clone();  // clone: a fresh, aligned allocation
}

std::optional<at::Tensor> float_paddings(const std::optional<at::Tensor>& frame_paddings) {
  if (!frame_paddings.has_value()) return std::nullopt;
  return frame_paddings->to(at::kFloat).contiguous();
}

Strides strides_of(const at::Tensor& x) {
  return {x.stride(0), x.stride(1), x.stride(2)};
}

// Instantiates body<scalar_t, TP> for qkv's dtype and the power of two TP >= T.
#define VPENGINE_TIME_DISPATCH(DT, T, BODY)                                  \
  [&] {                                                                      \
    if ((DT) == at::kFloat) {                                                \
      VPENGINE_TP_DISPATCH(float, T, BODY);                                  \
    } else if ((DT) == at::kHalf) {                                          \
      VPENGINE_TP_DISPATCH(c10::Half, T, BODY);                              \
    } else {                                                                 \
      VPENGINE_TP_DISPATCH(c10::BFloat16, T, BODY);                          \
    }                                                                        \
  }()
#define VPENGINE_TP_DISPATCH(SCALAR, T, BODY) \
  if ((T) <= 1) BODY<SCALAR, 1>();            \
  else if ((T) <= 2) BODY<SCALAR, 2>();       \
  else if ((T) <= 4) BODY<SCALAR, 4>();       \
  else if ((T) <= 8) BODY<SCALAR, 8>();       \
  else if ((T) <= 16) BODY<SCALAR, 16>();     \
  else BODY<SCALAR, 32>()

std::tuple<at::Tensor, at::Tensor> spacetime_attention_cuda(const at::Tensor& qkv_in, c10::string_view axis,
                                                            int64_t num_heads, double softcap,
                                                            const std::optional<at::Tensor>& frame_paddings) {
  check_args(qkv_in, axis, num_heads, frame_paddings);
  c10::cuda::CUDAGuard guard(qkv_in.device());
  const int64_t B = qkv_in.size(0), T = qkv_in.size(1), S = qkv_in.size(2);
  const int64_t H = num_heads, E = qkv_in.size(3) / (3 * num_heads);
  at::Tensor out = at::empty({B, T, S, H * E}, qkv_in.options());
  at::Tensor lse = at::empty({B, T, S, H}, qkv_in.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const at::Tensor qkv = vector_view(qkv_in);
  const auto pad = float_paddings(frame_paddings);
  const Params prm = make_params(B, T, S, H, E, softcap, strides_of(qkv), pad ? pad->data_ptr<float>() : nullptr);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Launch launch{qkv.const_data_ptr(), nullptr, nullptr, lse.mutable_data_ptr<float>(), out.mutable_data_ptr(), prm,
                stream};
  VPENGINE_TIME_DISPATCH(qkv.scalar_type(), T, launch.forward);
  return {out, lse};
}

at::Tensor spacetime_attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv_in,
                                             const at::Tensor& out, const at::Tensor& lse, c10::string_view axis,
                                             int64_t num_heads, double softcap,
                                             const std::optional<at::Tensor>& frame_paddings) {
  check_args(qkv_in, axis, num_heads, frame_paddings);
  c10::cuda::CUDAGuard guard(qkv_in.device());
  const int64_t B = qkv_in.size(0), T = qkv_in.size(1), S = qkv_in.size(2);
  const int64_t H = num_heads, E = qkv_in.size(3) / (3 * num_heads);
  // The kernels read out as qkv's dtype and lse as [B, T, S, H] fp32, on qkv's device.
  TORCH_CHECK_VALUE(out.dim() == 4 && out.size(0) == B && out.size(1) == T && out.size(2) == S &&
                        out.size(3) == H * E && grad_out.sizes() == out.sizes(),
                    "spacetime_attention_backward_native: grad_out ", grad_out.sizes(), " and out ", out.sizes(),
                    " must both be [B, T, S, H*E] = [", B, ", ", T, ", ", S, ", ", H * E, "]");
  TORCH_CHECK_VALUE(out.scalar_type() == qkv_in.scalar_type(), "spacetime_attention_backward_native: out is ",
                    out.scalar_type(), ", qkv ", qkv_in.scalar_type());
  TORCH_CHECK_VALUE(lse.dim() == 4 && lse.size(0) == B && lse.size(1) == T && lse.size(2) == S &&
                        lse.size(3) == H && lse.scalar_type() == at::kFloat,
                    "spacetime_attention_backward_native: lse must be float32 [B, T, S, H]; got ",
                    lse.scalar_type(), " ", lse.sizes());
  TORCH_CHECK_VALUE(grad_out.device() == qkv_in.device() && out.device() == qkv_in.device() &&
                        lse.device() == qkv_in.device(),
                    "spacetime_attention_backward_native: grad_out, out and lse must be on qkv's device ",
                    qkv_in.device());
  // Same strides as the fake impl's empty_like(qkv); a copy when those cannot
  // take 16-byte vectors.
  at::Tensor grad = at::empty_like(qkv_in);
  if (grad.numel() == 0) return grad;
  at::Tensor grad_work = vector_ready(grad) ? grad : at::empty(qkv_in.sizes(), qkv_in.options());
  const at::Tensor qkv = vector_view(qkv_in);
  // Read as contiguous 16-byte vectors too: a contiguous tensor can still
  // start off a 16-byte boundary (a view at an odd storage offset).
  const at::Tensor dout = vector_view(grad_out.contiguous().to(qkv_in.scalar_type()));
  const at::Tensor o = vector_view(out.contiguous());
  const at::Tensor l = lse.contiguous();
  const auto pad = float_paddings(frame_paddings);
  Params prm = make_params(B, T, S, H, E, softcap, strides_of(qkv), pad ? pad->data_ptr<float>() : nullptr);
  prm.grad = strides_of(grad_work);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Launch launch{qkv.const_data_ptr(), o.const_data_ptr(), dout.const_data_ptr(), const_cast<float*>(l.const_data_ptr<float>()),
                grad_work.mutable_data_ptr(), prm, stream};
  VPENGINE_TIME_DISPATCH(qkv.scalar_type(), T, launch.backward);
  if (!grad_work.is_same(grad)) grad.copy_(grad_work);
  return grad;
}

}  // namespace
}  // namespace vpengine

TORCH_LIBRARY_IMPL(vpengine, CUDA, m) {
  m.impl("spacetime_attention_native", &vpengine::spacetime_attention_cuda);
  m.impl("spacetime_attention_backward_native", &vpengine::spacetime_attention_backward_cuda);
}
