// vpengine::decoder_input_native: CPU and Meta kernels (schema with the rest
// of the token family in token_ops.cpp; CUDA kernel in csrc/cuda/token_ops.cu).
//
// Legend: B batch, N tokens, K kept tokens, D width.
//
//   out[b, i, :] = (inv_keep[b, perm[b, i]] >= 0 ? enc_kept[b, inv_keep[b, perm[b, i]], :]
//                                                 : mask_token[:]) + pos_emb[i, :]
//
// Scatter, shuffle and add in one pass (the stage-2 hot path): it reads the
// B*K*D kept rows once plus N*D positions (cache-resident over the batch) and
// writes B*N*D, where PyTorch's scatter + gather + add composition writes and
// re-reads the full [B, N, D] tensor three times. The per-row source map is
// composed on the host in one serial pass, which also validates keep_idx
// (in range, distinct) and perm (a permutation) before any write.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
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

at::Tensor decoder_input_cpu(const at::Tensor& enc_kept, const at::Tensor& keep_idx, const at::Tensor& mask_token,
                             const at::Tensor& perm_in, const at::Tensor& pos) {
  const char* op = "decoder_input_native";
  check_tokens(op, "enc_kept", enc_kept);
  check_index(op, "keep_idx", keep_idx, enc_kept, enc_kept.size(1));
  check_index(op, "perm", perm_in, enc_kept, std::nullopt);
  const int64_t B = enc_kept.size(0), N = perm_in.size(1), D = enc_kept.size(2);
  check_param(op, "mask_token", mask_token, enc_kept, {D});
  check_param(op, "pos_emb", pos, enc_kept, {N, D});
  const at::Tensor perm = perm_in.contiguous();
  std::vector<int64_t> src = inverse_index(op, "keep_idx", keep_idx.contiguous(), N);
  inverse_index(op, "perm", perm, N);
  // Compose in place: src[b, i] = inv_keep[b, perm[b, i]] (a row of inv_keep
  // is read through a copy because it is overwritten while it is read).
  const int64_t* p = perm.const_data_ptr<int64_t>();
  std::vector<int64_t> inv_b(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b) {
    std::copy(src.begin() + b * N, src.begin() + (b + 1) * N, inv_b.begin());
    for (int64_t i = 0; i < N; ++i) {
      src[b * N + i] = inv_b[p[b * N + i]];
    }
  }
  at::Tensor out = empty_output({B, N, D}, enc_kept.options());
  token_rows_cpu(out, enc_kept, src.data(), &mask_token, &pos);
  return out;
}

// Shapes only (index values are checked by the real kernel).
at::Tensor decoder_input_meta(const at::Tensor& enc_kept, const at::Tensor& keep_idx, const at::Tensor& mask_token,
                              const at::Tensor& perm, const at::Tensor& pos) {
  check_tokens("decoder_input_native", "enc_kept", enc_kept);
  return at::empty({enc_kept.size(0), perm.size(1), enc_kept.size(2)}, enc_kept.options());
}

}  // namespace
}  // namespace vpengine

TORCH_LIBRARY_IMPL(vpengine, CPU, m) {
  m.impl("decoder_input_native", &vpengine::decoder_input_cpu);
}

TORCH_LIBRARY_IMPL(vpengine, Meta, m) {
  m.impl("decoder_input_native", &vpengine::decoder_input_meta);
}
