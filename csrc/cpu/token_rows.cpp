// The row-gather engine of the token ops (declared in token_rows.h): one
// output row per (b, i), copied from a per-row source or filled, plus an
// optional positional row.
//
// Legend: B batch, I output rows per sample, D width.
//
//   out[b, i, :] = (src[b, i] >= 0 ? x[b, src[b, i], :] : fill[:]) + pos[i, :]
//
// Every output row is written exactly once and no source row is read twice.
// Rows without a pos add are one copy (or zero fill) through row_copy.h
// (huge pages, streaming stores for large outputs, next-row prefetch); with
// pos, a loop over D converting to float and rounding once (fp16/bf16 round
// to nearest even, the same as PyTorch's add), with AVX-512 / AVX2 / F16C
// paths where the CPU has them. Rows are spread over ATen's OpenMP threads.
//
// Also here: the argument checks and the validating inverse-index builder the
// op files share.

#include "token_rows.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "row_copy.h"

namespace vpengine::rows {

void check_tokens(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 3, op, ": ", name, " must be 3-D [B, tokens, D]; got shape ", t.sym_sizes());
}

void check_index(const char* op, const char* name, const at::Tensor& idx, const at::Tensor& x,
                 std::optional<int64_t> len) {
  TORCH_CHECK_VALUE(idx.dim() == 2 && idx.scalar_type() == at::kLong, op, ": ", name,
                    " must be a 2-D int64 tensor; got ", idx.scalar_type(), " of shape ", idx.sym_sizes());
  TORCH_CHECK_VALUE(idx.sym_size(0) == x.sym_size(0), op, ": ", name, " has batch ", idx.sym_size(0),
                    " but the tokens have batch ", x.sym_size(0));
  TORCH_CHECK_VALUE(!len || idx.sym_size(1) == *len, op, ": ", name, " has ", idx.sym_size(1),
                    " columns; expected ", len.value_or(0));
  TORCH_CHECK_VALUE(idx.device() == x.device(), op, ": ", name, " is on ", idx.device(), " but the tokens are on ",
                    x.device());
}

void check_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& x,
                 std::vector<int64_t> shape) {
  TORCH_CHECK_VALUE(p.sizes() == c10::IntArrayRef(shape), op, ": ", name, " must have shape ",
                    c10::IntArrayRef(shape), "; got ", p.sizes());
  TORCH_CHECK_VALUE(p.scalar_type() == x.scalar_type() && p.device() == x.device(), op, ": ", name, " is ",
                    p.scalar_type(), " on ", p.device(), "; the tokens are ", x.scalar_type(), " on ", x.device());
}

// inv[b * N + idx[b, j]] = j for idx [B, M]; -1 where no j names the row.
// Raises on out-of-range and repeated entries (first in row-major order).
std::vector<int64_t> inverse_index(const char* op, const char* name, const at::Tensor& idx_BM, int64_t N) {
  const int64_t B = idx_BM.size(0);
  const int64_t M = idx_BM.size(1);
  const int64_t* idx = idx_BM.const_data_ptr<int64_t>();
  std::vector<int64_t> inv(static_cast<size_t>(B * N), -1);
  for (int64_t b = 0; b < B; ++b) {
    int64_t* inv_b = inv.data() + b * N;
    for (int64_t j = 0; j < M; ++j) {
      const int64_t v = idx[b * M + j];
      TORCH_CHECK_VALUE(v >= 0 && v < N, op, ": ", name, "[", b, ", ", j, "] = ", v, " is out of range for ", N,
                        " tokens (need 0 <= index < N)");
      TORCH_CHECK_VALUE(inv_b[v] < 0, op, ": ", name, "[", b, ", ", j, "] = ", v, " repeats ", name, "[", b, ", ",
                        inv_b[v], "]; ", name, " must hold distinct indices per sample");
      inv_b[v] = j;
    }
  }
  return inv;
}

namespace {

// VPENGINE_CPU_ISA=avx2 keeps the AVX2 loops on an AVX-512 CPU, so that tests
// can check both against the reference on one machine. Read once.
inline bool force_avx2() {
  static const bool forced = [] {
    const char* v = std::getenv("VPENGINE_CPU_ISA");
    return v != nullptr && std::strcmp(v, "avx2") == 0;
  }();
  return forced;
}

// o = a + p (a == nullptr: zeros) for one row, each sum in float rounded once:
// for fp16/bf16 that equals the correctly rounded exact sum, i.e. PyTorch's add.
// stream: o is 16-byte aligned and D * sizeof(scalar_t) a multiple of 16;
// write with streaming stores (through a small L1 buffer here).
template <typename scalar_t>
void add_row_generic(scalar_t* o, const scalar_t* a, const scalar_t* p, int64_t D, bool stream) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  constexpr int64_t kChunk = 64;
  scalar_t buf[kChunk];
  for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
    const int64_t n = std::min(kChunk, D - d0);
    scalar_t* dst = stream ? buf : o + d0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t d = d0 + j;
      dst[j] = static_cast<scalar_t>((a ? static_cast<acc_t>(a[d]) : acc_t(0)) + static_cast<acc_t>(p[d]));
    }
    if (stream) {
      put_row(reinterpret_cast<char*>(o + d0), reinterpret_cast<const char*>(buf), n * sizeof(scalar_t), true,
              nullptr);
    }
  }
}

template <typename scalar_t>
void add_row(scalar_t* o, const scalar_t* a, const scalar_t* p, int64_t D, bool stream) {
  add_row_generic(o, a, p, D, stream);
}

#if defined(__x86_64__) && defined(__GNUC__)
inline void store8(uint16_t* o, __m128i v, bool stream) {
  if (stream) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(o), v);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), v);
  }
}

template <>
void add_row<float>(float* o, const float* a, const float* p, int64_t D, bool stream) {
  if (stream) {  // D % 4 == 0 here
    for (int64_t d = 0; d < D; d += 4) {
      const __m128 av = a ? _mm_loadu_ps(a + d) : _mm_setzero_ps();
      _mm_stream_ps(o + d, _mm_add_ps(av, _mm_loadu_ps(p + d)));
    }
    return;
  }
  for (int64_t d = 0; d < D; ++d) {
    o[d] = (a ? a[d] : 0.0f) + p[d];
  }
}
#endif

// bf16 by bit arithmetic (c10's conversions call out per element and stop the
// compiler from vectorizing): widen by a shift, round to nearest even by
// adding 0x7FFF plus the lowest kept bit, NaN to c10's 0x7FC0.
inline float bf16_bits_to_float(uint16_t h) {
  return c10::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

inline uint16_t bf16_add_bits(uint16_t a, uint16_t p) {
  const float s = bf16_bits_to_float(a) + bf16_bits_to_float(p);
  const uint32_t u = c10::bit_cast<uint32_t>(s);
  return s != s ? uint16_t{0x7FC0} : static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define VPENGINE_AVX2 1
__attribute__((target("avx2"))) inline __m256 bf16x8_to_float(const uint16_t* src) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// The same arithmetic, 8 lanes at a time.
__attribute__((target("avx2"))) void add_row_bf16_avx2(uint16_t* o, const uint16_t* a, const uint16_t* p,
                                                        int64_t D, bool stream) {
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF), qnan = _mm256_set1_epi32(0x7FC0);
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 sum = _mm256_add_ps(a ? bf16x8_to_float(a + d) : _mm256_setzero_ps(), bf16x8_to_float(p + d));
    const __m256i u = _mm256_castps_si256(sum);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
    r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(sum, sum, _CMP_UNORD_Q)));
    // packus works per 128-bit lane; gather the two low quadwords.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    store8(o + d, _mm256_castsi256_si128(packed), stream);
  }
  for (; d < D; ++d) {
    o[d] = bf16_add_bits(a ? a[d] : uint16_t{0}, p[d]);
  }
}
#endif

#ifdef VPENGINE_AVX2
__attribute__((target("avx512f"))) inline __m512 bf16x16_to_float(const uint16_t* src) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// The same arithmetic, 16 lanes at a time: half the instructions of the AVX2
// loop, which bounded the bf16 shuffle + pos on a 2-core VM (the add took
// longer than the row copies around it).
__attribute__((target("avx512f"))) void add_row_bf16_avx512(uint16_t* o, const uint16_t* a, const uint16_t* p,
                                                             int64_t D, bool stream) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF), qnan = _mm512_set1_epi32(0x7FC0);
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    const __m512 sum = _mm512_add_ps(a ? bf16x16_to_float(a + d) : _mm512_setzero_ps(), bf16x16_to_float(p + d));
    const __m512i u = _mm512_castps_si512(sum);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(sum, sum, _CMP_UNORD_Q), r, qnan);
    const __m256i packed = _mm512_cvtepi32_epi16(r);  // the low 16 bits of each lane: no saturation
    store8(o + d, _mm256_castsi256_si128(packed), stream);
    store8(o + d + 8, _mm256_extracti128_si256(packed, 1), stream);
  }
  if (d < D) add_row_bf16_avx2(o + d, a ? a + d : nullptr, p + d, D - d, stream);
}
#endif

template <>
void add_row<c10::BFloat16>(c10::BFloat16* o, const c10::BFloat16* a, const c10::BFloat16* p, int64_t D,
                            bool stream) {
  static_assert(sizeof(c10::BFloat16) == 2);
  const uint16_t* ab = reinterpret_cast<const uint16_t*>(a);
  const uint16_t* pb = reinterpret_cast<const uint16_t*>(p);
  uint16_t* ob = reinterpret_cast<uint16_t*>(o);
#ifdef VPENGINE_AVX2
  static const bool has_avx512 = __builtin_cpu_supports("avx512f");
  if (has_avx512 && !force_avx2()) {
    add_row_bf16_avx512(ob, ab, pb, D, stream);
    return;
  }
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) {
    add_row_bf16_avx2(ob, ab, pb, D, stream);
    return;
  }
#endif
  add_row_generic(o, a, p, D, stream);  // c10's conversions round the same way
}

// fp16: c10's software conversion costs ~6x the copy, so use the F16C
// instructions where the CPU has them (every x86 since 2013); cvtps_ph with
// round-to-nearest-even matches c10::Half's rounding.
#if defined(__x86_64__) && defined(__GNUC__)
#define VPENGINE_F16C 1
__attribute__((target("avx,f16c"))) void add_row_f16c(uint16_t* o, const uint16_t* a, const uint16_t* p, int64_t D,
                                                       bool stream) {
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 pv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + d)));
    const __m256 av = a ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + d))) : _mm256_setzero_ps();
    const __m128i sum = _mm256_cvtps_ph(_mm256_add_ps(av, pv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    store8(o + d, sum, stream);
  }
  for (; d < D; ++d) {
    const float s = (a ? static_cast<float>(c10::Half(a[d], c10::Half::from_bits())) : 0.0f) +
                    static_cast<float>(c10::Half(p[d], c10::Half::from_bits()));
    o[d] = c10::Half(s).x;
  }
}
#endif

template <>
void add_row<c10::Half>(c10::Half* o, const c10::Half* a, const c10::Half* p, int64_t D, bool stream) {
#ifdef VPENGINE_F16C
  static const bool has_f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  if (has_f16c) {
    add_row_f16c(reinterpret_cast<uint16_t*>(o), reinterpret_cast<const uint16_t*>(a),
                 reinterpret_cast<const uint16_t*>(p), D, stream);
    return;
  }
#endif
  add_row_generic(o, a, p, D, stream);
}

}  // namespace

// out[r] = (src[r] >= 0 ? x row : fill or zero) + pos[r % I], r over B*I rows.
void token_rows_cpu(at::Tensor& out_BID, const at::Tensor& x_in, const int64_t* src, const at::Tensor* fill,
                    const at::Tensor* pos) {
  const int64_t B = out_BID.size(0), I = out_BID.size(1), D = out_BID.size(2);
  if (B * I * D == 0) {
    return;
  }
  // Rows must be contiguous to be one memcpy; batch and token strides are free.
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const at::Tensor fill_c = fill ? fill->contiguous() : at::Tensor();
  const at::Tensor pos_c = pos ? pos->contiguous() : at::Tensor();
  const int64_t item = static_cast<int64_t>(out_BID.element_size());
  const int64_t row_bytes = D * item;
  const int64_t sb = x.stride(0) * item, sn = x.stride(1) * item;
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  const char* fp = fill ? static_cast<const char*>(fill_c.const_data_ptr()) : nullptr;
  char* op = static_cast<char*>(out_BID.mutable_data_ptr());
  const bool stream = use_streaming(out_BID, row_bytes);
  const int64_t grain = row_grain(row_bytes);
  auto source = [&](int64_t r) -> const char* {
    const int64_t s = src[r];
    return s >= 0 ? xp + (r / I) * sb + s * sn : fp;
  };
  if (!pos) {
    at::parallel_for(0, B * I, grain, [&](int64_t begin, int64_t end) {
      copy_rows(op, begin, end, row_bytes, stream, source);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_BID.scalar_type(), "token_rows_cpu", [&] {
    const scalar_t* pp = pos_c.const_data_ptr<scalar_t>();
    at::parallel_for(0, B * I, grain, [&](int64_t begin, int64_t end) {
      // Position-major order: the B rows that add pos[i] run back to back,
      // so the N*D table is read from DRAM once instead of B times.
      for (int64_t q = begin; q < end; ++q) {
        const int64_t i = q / B;
        const int64_t r = (q % B) * I + i;
        if (q + 1 < end) prefetch_row(source(((q + 1) % B) * I + (q + 1) / B), row_bytes);
        const scalar_t* a = reinterpret_cast<const scalar_t*>(source(r));
        add_row(reinterpret_cast<scalar_t*>(op + r * row_bytes), a, pp + i * D, D, stream);
      }
      stream_fence(stream);
    });
  });
}

}  // namespace vpengine::rows
