// The row-gather engine behind token_scatter/shuffle/unshuffle_native
// (token_ops.cpp) and decoder_input_native (token_decoder_input.cpp), with the
// argument checks they share. Implemented in token_rows.cpp.
//
// Legend: B batch, I output rows per sample, D width, M indices per sample.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace vpengine::rows {

// ValueError unless t is 3-D [B, tokens, D].
void check_tokens(const char* op, const char* name, const at::Tensor& t);

// ValueError unless idx is 2-D int64 with x's batch and device, and `len`
// columns when given.
void check_index(const char* op, const char* name, const at::Tensor& idx, const at::Tensor& x,
                 std::optional<int64_t> len);

// ValueError unless p has `shape` and x's dtype and device.
void check_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& x,
                 std::vector<int64_t> shape);

// inv[b * N + idx[b, j]] = j for a contiguous idx [B, M]; -1 where no j names
// the row. ValueError on out-of-range and repeated entries (the first in
// row-major order, named in the message).
std::vector<int64_t> inverse_index(const char* op, const char* name, const at::Tensor& idx_BM, int64_t N);

// out[b, i, :] = (src[b*I + i] >= 0 ? x[b, src[b*I + i], :] : fill or zero) + pos[i, :]
// for every row of out_BID [B, I, D] (fill, pos: nullptr when absent; x [B, *, D]
// with any batch and token strides). src entries must be valid: the callers
// validate them while building them.
void token_rows_cpu(at::Tensor& out_BID, const at::Tensor& x, const int64_t* src, const at::Tensor* fill,
                    const at::Tensor* pos);

}  // namespace vpengine::rows
