// vpengine::token_scatter_native, token_shuffle_native and
// token_unshuffle_native: CPU and Meta kernels, and the schemas of the token
// op family (decoder_input_native's kernels: token_decoder_input.cpp).
//
// Legend: B batch, N tokens, K kept tokens, D width.
//
// All of them are one row-gather with a per-row source (token_rows.h):
//
//   out[b, i, :] = (src[b, i] >= 0 ? x[b, src[b, i], :] : fill[:]) + pos[i, :]
//
//   token_scatter    src = inverse of keep_idx (-1 holes), fill (or zero)
//   token_shuffle    src = perm, optional pos
//   token_unshuffle  src = inverse of perm
//   decoder_input    src = inv_keep[b, perm[b, i]], fill = mask_token, pos
//
// so every output row is written exactly once and nothing is read twice.
//
// Index validation is always on and costs one serial pass over the B*N or
// B*K indices, which also builds the inverse maps the kernels need:
// out-of-range entries, repeated keep_idx entries and a perm that is not a
// permutation raise ValueError (TORCH_CHECK_VALUE) before any write.
//
// CUDA kernels of the same schemas: csrc/cuda/token_ops.cu.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "row_copy.h"
#include "token_rows.h"

namespace vpengine {
namespace {

using rows::check_index;
using rows::check_param;
using rows::check_tokens;
using rows::empty_output;
using rows::inverse_index;
using rows::token_rows_cpu;

at::Tensor token_scatter_cpu(const at::Tensor& x_kept, const at::Tensor& keep_idx, int64_t num_tokens,
                             const std::optional<at::Tensor>& fill) {
  const char* op = "token_scatter_native";
  check_tokens(op, "x_kept", x_kept);
  check_index(op, "keep_idx", keep_idx, x_kept, x_kept.size(1));
  TORCH_CHECK_VALUE(num_tokens >= 0, op, ": num_tokens must be >= 0; got ", num_tokens);
  if (fill) check_param(op, "fill", *fill, x_kept, {x_kept.size(2)});
  const std::vector<int64_t> inv = inverse_index(op, "keep_idx", keep_idx.contiguous(), num_tokens);
  at::Tensor out = empty_output({x_kept.size(0), num_tokens, x_kept.size(2)}, x_kept.options());
  token_rows_cpu(out, x_kept, inv.data(), fill ? &*fill : nullptr, nullptr);
  return out;
}

at::Tensor token_shuffle_cpu(const at::Tensor& x, const at::Tensor& perm_in, const std::optional<at::Tensor>& pos) {
  const char* op = "token_shuffle_native";
  check_tokens(op, "x", x);
  check_index(op, "perm", perm_in, x, x.size(1));
  if (pos) check_param(op, "pos_emb", *pos, x, {x.size(1), x.size(2)});
  const at::Tensor perm = perm_in.contiguous();
  inverse_index(op, "perm", perm, x.size(1));  // validation only: the source is perm itself
  at::Tensor out = empty_output(x.sizes(), x.options());
  token_rows_cpu(out, x, perm.const_data_ptr<int64_t>(), nullptr, pos ? &*pos : nullptr);
  return out;
}

at::Tensor token_unshuffle_cpu(const at::Tensor& y, const at::Tensor& perm) {
  const char* op = "token_unshuffle_native";
  check_tokens(op, "y", y);
  check_index(op, "perm", perm, y, y.size(1));
  const std::vector<int64_t> inv = inverse_index(op, "perm", perm.contiguous(), y.size(1));
  at::Tensor out = empty_output(y.sizes(), y.options());
  token_rows_cpu(out, y, inv.data(), nullptr, nullptr);
  return out;
}

// Meta kernels: shapes only (index values are checked by the real kernels).
at::Tensor token_scatter_meta(const at::Tensor& x_kept, const at::Tensor& keep_idx, int64_t num_tokens,
                              const std::optional<at::Tensor>& fill) {
  check_tokens("token_scatter_native", "x_kept", x_kept);
  return at::empty({x_kept.size(0), num_tokens, x_kept.size(2)}, x_kept.options());
}

at::Tensor token_shuffle_meta(const at::Tensor& x, const at::Tensor& perm, const std::optional<at::Tensor>& pos) {
  check_tokens("token_shuffle_native", "x", x);
  return at::empty(x.sizes(), x.options());
}

at::Tensor token_unshuffle_meta(const at::Tensor& y, const at::Tensor& perm) {
  check_tokens("token_unshuffle_native", "y", y);
  return at::empty(y.sizes(), y.options());
}

}  // namespace
}  // namespace vpengine

TORCH_LIBRARY_FRAGMENT(vpengine, m) {
  m.def("token_scatter_native(Tensor x_kept, Tensor keep_idx, int num_tokens, Tensor? fill) -> Tensor");
  m.def("token_shuffle_native(Tensor x, Tensor perm, Tensor? pos_emb) -> Tensor");
  m.def("token_unshuffle_native(Tensor y, Tensor perm) -> Tensor");
  m.def(
      "decoder_input_native(Tensor enc_kept, Tensor keep_idx, Tensor mask_token, Tensor perm, Tensor pos_emb) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(vpengine, CPU, m) {
  m.impl("token_scatter_native", &vpengine::token_scatter_cpu);
  m.impl("token_shuffle_native", &vpengine::token_shuffle_cpu);
  m.impl("token_unshuffle_native", &vpengine::token_unshuffle_cpu);
}

TORCH_LIBRARY_IMPL(vpengine, Meta, m) {
  m.impl("token_scatter_native", &vpengine::token_scatter_meta);
  m.impl("token_shuffle_native", &vpengine::token_shuffle_meta);
  m.impl("token_unshuffle_native", &vpengine::token_unshuffle_meta);
}
