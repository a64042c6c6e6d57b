// vpengine::spacetime_attention_cpu_native: soft-capped space-time attention
// on the CPU, one (sequence, head) at a time, straight from the packed qkv.
//
// Legend: B batch, T frames, S tokens per frame, H heads, E head dim,
// C = 3*H*E packed channels (order 3, H, E), L = S (space) or T (time), the
// length of the sequences attended over, Mq query rows of one block.
//
//   spacetime_attention_cpu_native(qkv [B,T,S,C], axis, num_heads, softcap,
//       frame_paddings [B,T]?, with_lse) -> (out [B,T,S,H*E], lse fp32 [B,T,S,H] or [0])
//
// Semantics: vpengine/ref/spacetime_attention.py, step for step (q scaled in
// its dtype, logits in qkv's dtype, the cap, masked logits replaced by NEG,
// softmax in fp32, probabilities cast back, probs @ v).
//
// Why it is faster than the reference on a CPU: the reference permutes q, k,
// v and the output into the batched-sequence layout (four copies of the
// activations) and materializes the [.., L, L] logits of every sequence and
// head at once (50 MB a layer at VideoPrism-B's space axis, 16 frames), then
// walks them five times through DRAM (cap, softmax, cast). Here each task
// takes one sequence and head, reads q, k, v in place (a row of the packed
// tensor is a BLAS matrix with leading dimension C, or S*C on the time axis),
// keeps its [Mq, L] block of logits in the L2 cache through every step and
// writes its output rows in place. The GEMMs are ATen's (MKL or oneDNN); the
// cap and softmax are one fused pass per row (capped_softmax.h), where ATen's
// tanh alone took 25 ms a layer against the GEMMs' 30 (VideoPrism-B, space
// axis, 2-core AVX2 VM).
//
// Each ATen call costs a few microseconds, which a space-axis block (L = 256:
// 8 MFLOP) hides and a time-axis sequence (L = 16: 33 KFLOP) does not:
// auto runs the time axis on the CPU with `ref`, from the measurement in
// vpengine/ops/attention_autotune.json.

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/le.h>
#include <ATen/ops/mm.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <c10/util/string_view.h>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "output_pool.h"
#include "spacetime_attention_cpu.h"

namespace vpengine {
namespace {

using namespace attention_cpu;

std::tuple<at::Tensor, at::Tensor> spacetime_attention_cpu(const at::Tensor& qkv_in, c10::string_view axis,
                                                           int64_t num_heads, double softcap,
                                                           const std::optional<at::Tensor>& frame_paddings,
                                                           bool with_lse) {
  check_args(qkv_in, axis, num_heads, frame_paddings, "spacetime_attention_cpu_native");
  check_softcap(softcap, "spacetime_attention_cpu_native");
  TORCH_CHECK_VALUE(qkv_in.device().is_cpu(), "spacetime_attention_cpu_native: qkv must be a CPU tensor; got ",
                    qkv_in.device());
  // BLAS takes a row of the packed tensor as a matrix when its channels are
  // contiguous; any other view runs on a contiguous copy.
  const at::Tensor qkv = qkv_in.stride(3) == 1 ? qkv_in : qkv_in.contiguous();
  const bool space = axis == "space";
  const int64_t B = qkv.size(0), T = qkv.size(1), S = qkv.size(2), C = qkv.size(3);
  const int64_t H = num_heads, E = C / (3 * H), HE = H * E;
  const auto opts = qkv.options();
  at::Tensor out = pool::empty_large({B, T, S, HE}, opts);
  at::Tensor lse = at::empty(with_lse ? at::IntArrayRef{B, T, S, H} : at::IntArrayRef{0}, opts.dtype(at::kFloat));
  if (B * T * S == 0) {
    return {out, lse};
  }
  // True = padded frame, as the reference's key_padding_mask (NaN pads too).
  std::optional<at::Tensor> padded;
  if (frame_paddings.has_value()) {
    padded = at::le(*frame_paddings, 0.5).logical_not_().contiguous();
  }
  const Layout lay = layout_of(qkv, space, H, HE);
  const int64_t L = lay.L;
  const int64_t Mq = block_rows(L);
  const at::ScalarType dtype = qkv.scalar_type();
  const bool fp32 = dtype == at::kFloat;
  const Params prm{fp32, softcap, 1.0 / std::sqrt(static_cast<double>(E)), dtype, fp32 || gemm16_in_hardware(dtype)};
  const int64_t tasks = lay.outer * lay.inner * H;

  const bool* pad_rows = padded ? padded->const_data_ptr<bool>() : nullptr;
  float* lse_data = with_lse ? lse.data_ptr<float>() : nullptr;
  const int64_t off = qkv.storage_offset();

  // The kernel computes in qkv's dtype, as ref (which turns autocast off) and
  // the op's fake impl promise: under autocast, at::mm would round to bf16
  // (fp16 inputs lost precision, fp32 GEMMs became emulated bf16 ones, and
  // the backward mixed dtypes). Set before caller_state, which carries it to
  // the worker threads.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  // OpenMP's workers do not inherit the caller's thread-local state: without
  // it, a call under torch.inference_mode() wrote to its inference-mode
  // output from a thread outside that mode, which PyTorch refuses.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor logits = at::empty({Mq, L}, opts.dtype(at::kFloat));
    const std::vector<uint8_t> every_key(L, 1);  // a padded frame's queries see every key masked
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % H, seq = task / H, i = seq % lay.inner, o = seq / lay.inner;
      const int64_t base = off + o * lay.q_outer + i * lay.q_inner;
      at::Tensor k = qkv.as_strided({E, L}, {1, lay.q_row}, base + (H + h) * E);
      at::Tensor v = qkv.as_strided({L, E}, {lay.q_row, 1}, base + (2 * H + h) * E);
      if (!prm.gemm16) {  // exact fp32 copies for the fp32 GEMMs
        k = k.to(at::kFloat);
        v = v.to(at::kFloat);
      }
      const Keys keys = keys_of(pad_rows, space, o, i, T, every_key);
      for (int64_t r0 = 0; r0 < L; r0 += Mq) {
        const int64_t m = std::min(Mq, L - r0);
        at::Tensor z = logits.narrow(0, 0, m);
        const at::Tensor q = qkv.as_strided({m, E}, {lay.q_row, 1}, base + r0 * lay.q_row + h * E);
        const int64_t l_off = o * lay.l_outer + i * lay.l_inner + r0 * lay.l_row + h;
        probabilities(z, q, k, prm, keys, lse_data ? lse_data + l_off : nullptr, lay.l_row);
        const int64_t o_off = o * lay.o_outer + i * lay.o_inner + r0 * lay.o_row + h * E;
        at::Tensor dst = out.as_strided({m, E}, {lay.o_row, 1}, out.storage_offset() + o_off);
        if (prm.fp32) {
          at::mm_out(dst, z, v);
        } else if (prm.gemm16) {
          at::mm_out(dst, z.to(dtype), v);
        } else {  // p rounded to qkv's dtype, as the reference, then multiplied in fp32
          dst.copy_(at::mm(z.to(dtype).to(at::kFloat), v));
        }
      }
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> spacetime_attention_cpu_meta(const at::Tensor& qkv, c10::string_view axis,
                                                                int64_t num_heads, double softcap,
                                                                const std::optional<at::Tensor>& frame_paddings,
                                                                bool with_lse) {
  check_args(qkv, axis, num_heads, frame_paddings, "spacetime_attention_cpu_native");
  at::Tensor out =
      at::empty_symint({qkv.sym_size(0), qkv.sym_size(1), qkv.sym_size(2), qkv.sym_size(3) / 3}, qkv.options());
  std::vector<c10::SymInt> lse_sizes{c10::SymInt(0)};
  if (with_lse) {
    lse_sizes = {qkv.sym_size(0), qkv.sym_size(1), qkv.sym_size(2), c10::SymInt(num_heads)};
  }
  at::Tensor lse = at::empty_symint(lse_sizes, qkv.options().dtype(at::kFloat));
  return {out, lse};
}

}  // namespace
}  // namespace vpengine

TORCH_LIBRARY_FRAGMENT(vpengine, m) {
  m.def(
      "spacetime_attention_cpu_native(Tensor qkv, str axis, int num_heads, float softcap, "
      "Tensor? frame_paddings, bool with_lse) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vpengine, CPU, m) {
  m.impl("spacetime_attention_cpu_native", &vpengine::spacetime_attention_cpu);
}

TORCH_LIBRARY_IMPL(vpengine, Meta, m) {
  m.impl("spacetime_attention_cpu_native", &vpengine::spacetime_attention_cpu_meta);
}
