// Schemas and Meta (shape) kernels of the native space-time attention ops.
//
// Legend: B batch, T frames, S tokens per frame, H heads, E head dim,
// C = 3*H*E packed channels (order 3, H, E).
//
//   spacetime_attention_native(qkv [B,T,S,C], axis, num_heads, softcap, frame_paddings [B,T]?)
//       -> (out [B,T,S,H*E] in qkv's dtype, lse fp32 [B,T,S,H])
//   spacetime_attention_backward_native(grad_out, qkv, out, lse, axis, num_heads, softcap,
//       frame_paddings?) -> grad qkv, strides of empty_like(qkv)
//
// Semantics: vpengine/ref/spacetime_attention.py. These ops' only kernels
// are CUDA (csrc/cuda/spacetime_attention_time.cu, the time axis with T <= 32);
// the CPU kernels are separate ops (spacetime_attention_cpu*.cpp). This file
// holds the schemas (they must live in vpengine._C, which always builds) and
// the Meta kernels that let torch.compile trace the ops. The public op with autograd
// and backend choice is vpengine.ops.spacetime_attention.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <c10/util/string_view.h>
#include <tuple>

namespace vpengine {
namespace {

constexpr int64_t kMaxFrames = 32;
constexpr int64_t kMaxHeadDim = 128;

// The CUDA file repeats these checks with the same messages (it does not link
// against this library).
void check_args(const at::Tensor& qkv, c10::string_view axis, int64_t num_heads,
                const std::optional<at::Tensor>& frame_paddings) {
  TORCH_CHECK_VALUE(qkv.dim() == 4, "spacetime_attention_native: qkv must be 4-D [B, T, S, 3*H*E]; got shape ",
                    qkv.sym_sizes());
  TORCH_CHECK_VALUE(axis == "time", "spacetime_attention_native: only axis='time' has a native kernel; got '",
                    std::string(axis), "'");
  TORCH_CHECK_VALUE(num_heads > 0, "spacetime_attention_native: num_heads must be positive; got ", num_heads);
  const c10::SymInt C = qkv.sym_size(3);
  TORCH_CHECK_VALUE(C % (3 * num_heads) == 0, "spacetime_attention_native: qkv's last dim ", C,
                    " is not 3 * num_heads * E with num_heads = ", num_heads);
  const c10::SymInt E = C / (3 * num_heads);
  TORCH_CHECK_VALUE(E <= kMaxHeadDim && E % 8 == 0, "spacetime_attention_native: head dim E = ", E,
                    " must be a multiple of 8 and at most ", kMaxHeadDim);
  TORCH_CHECK_VALUE(qkv.sym_size(1) <= kMaxFrames, "spacetime_attention_native: T = ", qkv.sym_size(1),
                    " frames; the kernel keeps a sequence in one warp, T <= ", kMaxFrames);
  const auto dt = qkv.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                    "spacetime_attention_native: qkv must be float32, float16 or bfloat16; got ", dt);
  if (frame_paddings.has_value()) {
    const at::Tensor& pad = *frame_paddings;
    TORCH_CHECK_VALUE(pad.dim() == 2 && pad.sym_size(0) == qkv.sym_size(0) && pad.sym_size(1) == qkv.sym_size(1),
                      "spacetime_attention_native: frame_paddings must be [B, T] = [", qkv.sym_size(0), ", ",
                      qkv.sym_size(1), "]; got shape ", pad.sym_sizes());
    TORCH_CHECK_VALUE(pad.device() == qkv.device(), "spacetime_attention_native: frame_paddings is on ",
                      pad.device(), " but qkv is on ", qkv.device());
  }
}

std::tuple<at::Tensor, at::Tensor> spacetime_attention_meta(const at::Tensor& qkv, c10::string_view axis,
                                                            int64_t num_heads, double softcap,
                                                            const std::optional<at::Tensor>& frame_paddings) {
  check_args(qkv, axis, num_heads, frame_paddings);
  const c10::SymInt HE = qkv.sym_size(3) / 3;
  at::Tensor out = at::empty_symint({qkv.sym_size(0), qkv.sym_size(1), qkv.sym_size(2), HE}, qkv.options());
  at::Tensor lse = at::empty_symint({qkv.sym_size(0), qkv.sym_size(1), qkv.sym_size(2), c10::SymInt(num_heads)},
                                    qkv.options().dtype(at::kFloat));
  return {out, lse};
}

at::Tensor spacetime_attention_backward_meta(const at::Tensor& grad_out, const at::Tensor& qkv,
                                             const at::Tensor& out, const at::Tensor& lse, c10::string_view axis,
                                             int64_t num_heads, double softcap,
                                             const std::optional<at::Tensor>& frame_paddings) {
  check_args(qkv, axis, num_heads, frame_paddings);
  TORCH_CHECK_VALUE(grad_out.sym_sizes() == out.sym_sizes(), "spacetime_attention_backward_native: grad_out shape ",
                    grad_out.sym_sizes(), " != out shape ", out.sym_sizes());
  return at::empty_like(qkv);
}

}  // namespace
}  // namespace vpengine

TORCH_LIBRARY_FRAGMENT(vpengine, m) {
  m.def(
      "spacetime_attention_native(Tensor qkv, str axis, int num_heads, float softcap, "
      "Tensor? frame_paddings) -> (Tensor, Tensor)");
  m.def(
      "spacetime_attention_backward_native(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, str axis, "
      "int num_heads, float softcap, Tensor? frame_paddings) -> Tensor");
}

TORCH_LIBRARY_IMPL(vpengine, Meta, m) {
  m.impl("spacetime_attention_native", &vpengine::spacetime_attention_meta);
  m.impl("spacetime_attention_backward_native", &vpengine::spacetime_attention_backward_meta);
}
