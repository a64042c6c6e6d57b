// Shared by the CPU space-time attention kernels, forward
// (spacetime_attention_cpu.cpp) and backward (spacetime_attention_cpu_bwd.cpp):
// argument checks, where each sequence's rows live in the packed qkv, and
// one block of probabilities.
//
// Legend: B batch, T frames, S tokens per frame, H heads, E head dim,
// C = 3*H*E packed channels, L the attended sequence's length (S or T),
// m query rows of one block.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/_softmax.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "capped_softmax.h"

namespace vpengine::attention_cpu {

using capped::kNeg;
// Logit block of one task: about 256 KiB of fp32, a quarter of a 1 MiB L2.
constexpr int64_t kBlockFloats = int64_t{1} << 16;

// Query rows per block for sequences of L keys.
inline int64_t block_rows(int64_t L) { return std::clamp<int64_t>(kBlockFloats / L, 1, L); }

inline void check_args(const at::Tensor& qkv, c10::string_view axis, int64_t num_heads,
                       const std::optional<at::Tensor>& frame_paddings, const char* op) {
  TORCH_CHECK_VALUE(qkv.dim() == 4, op, ": qkv must be 4-D [B, T, S, 3*H*E]; got shape ",
                    qkv.sym_sizes());
  TORCH_CHECK_VALUE(axis == "space" || axis == "time",
                    op, ": axis must be 'space' or 'time'; got '", std::string(axis), "'");
  TORCH_CHECK_VALUE(num_heads > 0 && num_heads <= std::numeric_limits<int64_t>::max() / 3, op,
                    ": num_heads must be positive (and 3 * num_heads an int64); got ", num_heads);
  const c10::SymInt C = qkv.sym_size(3);
  TORCH_CHECK_VALUE(C > 0 && C % (3 * num_heads) == 0, op, ": qkv's last dim ", C,
                    " is not 3 * num_heads * E with num_heads = ", num_heads, " and E >= 1");
  const auto dt = qkv.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                    op, ": qkv must be float32, float16 or bfloat16; got ", dt);
  if (frame_paddings.has_value()) {
    const at::Tensor& pad = *frame_paddings;
    TORCH_CHECK_VALUE(pad.dim() == 2 && pad.sym_size(0) == qkv.sym_size(0) && pad.sym_size(1) == qkv.sym_size(1),
                      op, ": frame_paddings must be [B, T] = [", qkv.sym_size(0), ", ",
                      qkv.sym_size(1), "]; got shape ", pad.sym_sizes());
    TORCH_CHECK_VALUE(pad.device() == qkv.device(), op, ": frame_paddings is on ",
                      pad.device(), " but qkv is on ", qkv.device());
    TORCH_CHECK_VALUE(!pad.is_complex(), op, ": frame_paddings must be real; got ",
                      pad.scalar_type());
  }
}

// The public op's rule (vpengine.ops.spacetime_attention.SOFTCAP_RANGE): caps
// outside it overflow fp32 constants where the reference stays finite.
inline void check_softcap(double softcap, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(softcap) && (softcap <= 0 || (softcap >= 1e-6 && softcap <= 1e6)), op,
                    ": softcap must be a finite number (0 or less: no cap; else from 1e-06 to 1e+06); got ",
                    softcap);
}

// Where one sequence's rows live: element offsets of its first row in qkv,
// out and lse, and the distance between consecutive rows in each.
struct Layout {
  int64_t L, outer, inner;          // sequence length; sequences = outer x inner
  int64_t q_outer, q_inner, q_row;  // qkv strides
  int64_t o_outer, o_inner, o_row;  // out strides (contiguous [B, T, S, H*E])
  int64_t l_outer, l_inner, l_row;  // lse strides (contiguous [B, T, S, H])
};

inline Layout layout_of(const at::Tensor& qkv, bool space, int64_t H, int64_t HE) {
  const int64_t T = qkv.size(1), S = qkv.size(2);
  if (space) {  // sequence (b, t): the S tokens of frame t
    return {S, qkv.size(0), T, qkv.stride(0), qkv.stride(1), qkv.stride(2),
            T * S * HE, S * HE, HE, T * S * H, S * H, H};
  }
  // sequence (b, s): the T frames of token s
  return {T, qkv.size(0), S, qkv.stride(0), qkv.stride(2), qkv.stride(1),
          T * S * HE, HE, S * HE, T * S * H, H, S * H};
}

// The keys a sequence's queries may not see: none, some (the time axis'
// padded frames, [L] bools) or all (the space axis in a padded frame).
struct Keys {
  const bool* masked = nullptr;
  bool all_masked = false;
};

// The keys of sequence (o, i) given the padded frames [B, T] (or null):
// space, sequence (b, t): all of them when frame t is padded; time,
// sequence (b, s): clip b's padded frames. every_key: L true bytes.
inline Keys keys_of(const bool* padded, bool space, int64_t o, int64_t i, int64_t T,
                    const std::vector<uint8_t>& every_key) {
  Keys keys;
  if (padded == nullptr) return keys;
  if (space) {
    keys.all_masked = padded[o * T + i];
    keys.masked = keys.all_masked ? reinterpret_cast<const bool*>(every_key.data()) : nullptr;
  } else {
    keys.masked = padded + o * T;
  }
  return keys;
}

// Whether to multiply `dtype` (fp16 or bf16) matrices in that dtype: where
// the CPU does it in hardware (AVX512-BF16/AMX-BF16, AVX512-FP16/AMX-FP16,
// from cpuid). Without them oneDNN and MKL emulate the 16-bit GEMM: 20x the
// time of the same attention in fp32 on a 2-core AVX2 VM (B space forward,
// bf16 924 ms, fp32 39 ms). VPENGINE_CPU_GEMM16=1 or 0 overrides the choice
// (the tests run both paths on any CPU).
inline bool gemm16_in_hardware(at::ScalarType dtype) {
  const char* forced = std::getenv("VPENGINE_CPU_GEMM16");
  if (forced != nullptr && (forced[0] == '0' || forced[0] == '1') && forced[1] == '\0') {
    return forced[0] == '1';
  }
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool bf16 = [] {
    unsigned a, b, c, d;
    const bool amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1);
    return amx || (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1));
  }();
  static const bool fp16 = [] {
    unsigned a, b, c, d;
    const bool avx512 = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 23 & 1);
    return avx512 || (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 21 & 1));
  }();
  return dtype == at::kBFloat16 ? bf16 : fp16;
#else
  (void)dtype;
  return true;
#endif
}

struct Params {
  bool fp32;
  double softcap;  // <= 0: no cap
  double scale;    // E ** -0.5
  at::ScalarType dtype = at::kFloat;
  // fp16/bf16 qkv: GEMMs in that dtype, or in fp32 on exact fp32 copies of
  // its values with each result rounded to it, as the 16-bit GEMM rounds
  // its fp32 accumulator (k then holds the fp32 copy).
  bool gemm16 = true;
};

// The logits of q against k (transposed, [E, L]) in qkv's 16-bit dtype: q
// scaled and rounded there, as the reference.
inline at::Tensor logits16(const at::Tensor& q, const at::Tensor& k, const Params& p) {
  const at::Tensor qs = at::mul(q, p.scale);
  return p.gemm16 ? at::mm(qs, k) : at::mm(qs.to(at::kFloat), k).to(p.dtype);
}

// Overwrites z [m, L] with the probabilities of m query rows against every
// key, and writes their lse to lse[r * lse_row] when lse is not null. With a
// cap, th (a contiguous [m, L] fp32 buffer, or null) receives tanh(s / cap).
inline void probabilities(at::Tensor& z, const at::Tensor& q, const at::Tensor& k, const Params& p, const Keys& keys,
                          float* lse, int64_t lse_row, float* th = nullptr) {
  const int64_t m = z.size(0), L = z.size(1);
  if (p.softcap > 0) {
    if (keys.all_masked) {
      z.zero_();  // every logit becomes NEG; defined values keep the tanh pass clean
    } else if (p.fp32 && p.scale <= p.softcap) {
      // q scaled by scale / cap (at most 1, so q stays finite where q * scale
      // is) instead of scale saves the division pass; both round once.
      at::mm_out(z, at::mul(q, p.scale / p.softcap), k);
    } else if (p.fp32) {
      at::mm_out(z, at::mul(q, p.scale), k);
      z.div_(p.softcap);
    } else {  // fp16/bf16: the logits rounded in qkv's dtype, as the reference
      z.copy_(logits16(q, k, p)).div_(p.softcap);
    }
    float* rows = z.data_ptr<float>();
    const float cap = static_cast<float>(p.softcap);
    for (int64_t r = 0; r < m; ++r) {
      const float row_lse = capped::softmax_row(rows + r * L, L, cap, keys.masked, th ? th + r * L : nullptr);
      if (lse != nullptr) lse[r * lse_row] = row_lse;
    }
    return;
  }
  if (keys.all_masked) {
    z.fill_(kNeg);
  } else if (p.fp32) {
    at::mm_out(z, at::mul(q, p.scale), k);
  } else {
    z.copy_(logits16(q, k, p));
  }
  if (keys.masked != nullptr && !keys.all_masked) {
    z.masked_fill_(at::from_blob(const_cast<bool*>(keys.masked), {L}, at::kBool), kNeg);
  }
  at::Tensor row_max;
  if (lse != nullptr) row_max = at::amax(z, 1);
  at::_softmax_out(z, z, 1, false);
  if (lse != nullptr) {
    // softmax's largest probability is 1 / sum(exp(z - max)), so
    // lse = max + log(sum) = max - log(p_max), without a second exp pass.
    at::from_blob(lse, {m}, {lse_row}, at::kFloat).copy_(row_max.sub_(at::amax(z, 1).log_()));
  }
}

}  // namespace vpengine::attention_cpu
