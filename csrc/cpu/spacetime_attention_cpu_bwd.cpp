// vpengine::spacetime_attention_cpu_backward_native: the gradient of the CPU
// space-time attention with respect to the packed qkv.
//
// Legend: as spacetime_attention_cpu.h; do the output's gradient.
//
//   spacetime_attention_cpu_backward_native(grad_out [B,T,S,H*E], qkv [B,T,S,C],
//       out [B,T,S,H*E], axis, num_heads, softcap, frame_paddings [B,T]?)
//       -> grad qkv [B,T,S,C], contiguous
//
// Math: vpengine/ref/spacetime_attention.py's backward, in fp32 whatever
// qkv's dtype. Per (sequence, head) and block of query rows, the
// probabilities p and tanh(s / cap) are recomputed in the L2 cache (the
// forward's pass, capped_softmax.h), then
//   dz = p * (do v^T - rowsum(do * o)),  zero at masked keys;
//   ds = dz * (1 - tanh^2);  dq = scale * ds k;  dk += ds^T (scale q);  dv += p^T do.
// rowsum(do * o) equals rowsum(p * do v^T), but not where do holds an inf:
// the first gives the reference's infinities, the second NaN. o is the saved
// output for fp32 qkv and p v in fp32 for fp16/bf16 (the reference's o). Each task
// writes its own head's columns of its own rows, so tasks never share an
// output.

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/le.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <c10/util/string_view.h>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "spacetime_attention_cpu.h"

namespace vpengine {
namespace {

using namespace attention_cpu;
constexpr const char* kOp = "spacetime_attention_cpu_backward_native";

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& qkv, const char* name = "grad_out") {
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.sym_size(0) == qkv.sym_size(0) &&
                        grad_out.sym_size(1) == qkv.sym_size(1) && grad_out.sym_size(2) == qkv.sym_size(2) &&
                        grad_out.sym_size(3) * 3 == qkv.sym_size(3),
                    kOp, ": ", name, " must be [B, T, S, H*E] = the output's shape for qkv of shape ", qkv.sym_sizes(),
                    "; got ", grad_out.sym_sizes());
  TORCH_CHECK_VALUE(grad_out.scalar_type() == qkv.scalar_type() && grad_out.device() == qkv.device(), kOp,
                    ": ", name, " must match qkv's dtype and device; got ", grad_out.scalar_type(), " on ",
                    grad_out.device(), " for qkv ", qkv.scalar_type(), " on ", qkv.device());
}

at::Tensor spacetime_attention_cpu_backward(const at::Tensor& grad_out_in, const at::Tensor& qkv_in,
                                            const at::Tensor& out_in, c10::string_view axis, int64_t num_heads, double softcap,
                                            const std::optional<at::Tensor>& frame_paddings) {
  check_args(qkv_in, axis, num_heads, frame_paddings, kOp);
  check_softcap(softcap, kOp);
  check_grad_out(grad_out_in, qkv_in);
  check_grad_out(out_in, qkv_in, "out");
  TORCH_CHECK_VALUE(qkv_in.device().is_cpu(), kOp, ": qkv must be a CPU tensor; got ", qkv_in.device());
  const at::Tensor qkv = qkv_in.stride(3) == 1 ? qkv_in : qkv_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous(), out = out_in.contiguous();
  const bool space = axis == "space";
  const int64_t B = qkv.size(0), T = qkv.size(1), S = qkv.size(2), C = qkv.size(3);
  const int64_t H = num_heads, E = C / (3 * H), HE = H * E;
  at::Tensor grad = at::empty({B, T, S, C}, qkv.options());
  if (B * T * S == 0) {
    return grad;
  }
  std::optional<at::Tensor> padded;
  if (frame_paddings.has_value()) {
    padded = at::le(*frame_paddings, 0.5).logical_not_().contiguous();
  }
  const bool* pad_rows = padded ? padded->const_data_ptr<bool>() : nullptr;
  const Layout lay = layout_of(qkv, space, H, HE);   // qkv's rows; o_* are grad_out's
  const Layout glay = layout_of(grad, space, H, HE);  // grad's rows
  const int64_t L = lay.L, Mq = block_rows(L);
  const double scale = 1.0 / std::sqrt(static_cast<double>(E));
  const Params prm{true, softcap, scale};  // the reference's backward runs in fp32
  const bool exact_out = qkv.scalar_type() == at::kFloat;
  const bool capped = softcap > 0;
  const int64_t tasks = lay.outer * lay.inner * H;
  const int64_t off = qkv.storage_offset(), do_off = grad_out.storage_offset(), o_off = out.storage_offset();
  const auto f32 = qkv.options().dtype(at::kFloat);

  // Autocast off, as in the forward (spacetime_attention_cpu.cpp).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::ThreadLocalState caller_state;  // see spacetime_attention_cpu.cpp
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor probs = at::empty({Mq, L}, f32), tanh_buf = at::empty({Mq, L}, f32);
    const std::vector<uint8_t> every_key(L, 1);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % H, seq = task / H, i = seq % lay.inner, o = seq / lay.inner;
      const int64_t base = off + o * lay.q_outer + i * lay.q_inner;
      const int64_t gbase = o * glay.q_outer + i * glay.q_inner;
      auto rows = [&](const at::Tensor& t, int64_t first, int64_t n, int64_t row, int64_t col) {
        return t.as_strided({n, E}, {row, 1}, first + col);
      };
      // fp32 views (fp32 qkv) or copies of this sequence's q, k, v and do.
      const at::Tensor q = rows(qkv, base, L, lay.q_row, h * E).to(at::kFloat);
      const at::Tensor k = rows(qkv, base, L, lay.q_row, (H + h) * E).to(at::kFloat);
      const at::Tensor v = rows(qkv, base, L, lay.q_row, (2 * H + h) * E).to(at::kFloat);
      const int64_t seq_out = o * lay.o_outer + i * lay.o_inner;
      const at::Tensor d_o = rows(grad_out, do_off + seq_out, L, lay.o_row, h * E).to(at::kFloat);
      // rowsum(do * o) from the saved fp32 output; a 16-bit output's rounding,
      // multiplied into every dz, broke the error rule (fp16, no cap: 0.28
      // against a bound of 0.24), so 16-bit qkv recomputes o in fp32 per block.
      at::Tensor d_o_dot_o;
      if (exact_out) {
        d_o_dot_o = d_o.mul(rows(out, o_off + seq_out, L, lay.o_row, h * E)).sum(1, true);
      }
      const Keys keys = keys_of(pad_rows, space, o, i, T, every_key);
      at::Tensor dk = at::zeros({L, E}, f32), dv = at::zeros({L, E}, f32);
      for (int64_t r0 = 0; r0 < L; r0 += Mq) {
        const int64_t m = std::min(Mq, L - r0);
        at::Tensor p = probs.narrow(0, 0, m);
        const at::Tensor q_blk = q.narrow(0, r0, m), do_blk = d_o.narrow(0, r0, m);
        probabilities(p, q_blk, k.t(), prm, keys, nullptr, 0, capped ? tanh_buf.data_ptr<float>() : nullptr);
        dv.addmm_(p.t(), do_blk);
        at::Tensor dq_blk = rows(grad, gbase + r0 * glay.q_row, m, glay.q_row, h * E);
        if (keys.all_masked) {  // every logit is the constant NEG: no gradient reaches q or k
          dq_blk.zero_();
          continue;
        }
        at::Tensor dz = at::mm(do_blk, v.t());                          // do v^T
        const at::Tensor d_o_dot_o_blk =
            exact_out ? d_o_dot_o.narrow(0, r0, m) : do_blk.mul(at::mm(p, v)).sum(1, true);
        dz.sub_(d_o_dot_o_blk).mul_(p);  // p * (dp - rowsum(do * o))
        if (keys.masked != nullptr) {
          dz.masked_fill_(at::from_blob(const_cast<bool*>(keys.masked), {L}, at::kBool), 0.0);
        }
        if (capped) {
          at::Tensor th = tanh_buf.narrow(0, 0, m);
          dz.mul_(th.mul_(th).neg_().add_(1.0));  // ds = dz * (1 - tanh^2)
        }
        dq_blk.copy_(at::mm(dz, k).mul_(scale));
        dk.addmm_(dz.t(), q_blk, /*beta=*/1.0, /*alpha=*/scale);
      }
      rows(grad, gbase, L, glay.q_row, (H + h) * E).copy_(dk);
      rows(grad, gbase, L, glay.q_row, (2 * H + h) * E).copy_(dv);
    }
  });
  return grad;
}

at::Tensor spacetime_attention_cpu_backward_meta(const at::Tensor& grad_out, const at::Tensor& qkv,
                                                 const at::Tensor& out, c10::string_view axis, int64_t num_heads, double softcap,
                                                 const std::optional<at::Tensor>& frame_paddings) {
  check_args(qkv, axis, num_heads, frame_paddings, kOp);
  check_grad_out(grad_out, qkv);
  check_grad_out(out, qkv, "out");
  return at::empty_symint(qkv.sym_sizes(), qkv.options());
}

}  // namespace
}  // namespace vpengine

TORCH_LIBRARY_FRAGMENT(vpengine, m) {
  m.def(
      "spacetime_attention_cpu_backward_native(Tensor grad_out, Tensor qkv, Tensor out, str axis, int num_heads, "
      "float softcap, Tensor? frame_paddings) -> Tensor");
}

TORCH_LIBRARY_IMPL(vpengine, CPU, m) {
  m.impl("spacetime_attention_cpu_backward_native", &vpengine::spacetime_attention_cpu_backward);
}

TORCH_LIBRARY_IMPL(vpengine, Meta, m) {
  m.impl("spacetime_attention_cpu_backward_native", &vpengine::spacetime_attention_cpu_backward_meta);
}
