// vpengine::token_scatter_native, token_shuffle_native, token_unshuffle_native
// and decoder_input_native: schemas, CPU and Meta kernels.
//
// Legend: B batch, N tokens, K kept tokens, D width, I output rows per sample.
//
// All four are one row-gather with a per-row source:
//
//   out[b, i, :] = (src[b, i] >= 0 ? x[b, src[b, i], :] : fill[:]) + pos[i, :]
//
//   token_scatter    src = inverse of keep_idx (-1 holes), fill (or zero)
//   token_shuffle    src = perm, optional pos
//   token_unshuffle  src = inverse of perm
//   decoder_input    src = inv_keep[b, perm[b, i]], fill = mask_token, pos
//
// so every output row is written exactly once and nothing is read twice: the
// fused decoder_input reads B*K*D kept rows + N*D positions (cache-resident
// over the batch) and writes B*N*D, where PyTorch's scatter + gather + add
// composition writes and re-reads the full [B, N, D] tensor three times.
// Rows without a pos add are one memcpy (or memset for zero fill); with pos,
// a loop over D converting to float and rounding once (fp16/bf16 round to
// nearest even, the same as PyTorch's add). Rows are spread over ATen's
// OpenMP threads.
//
// Index validation is always on and costs one serial pass over the B*N or
// B*K indices, which also builds the inverse maps the kernels need:
// out-of-range entries, repeated keep_idx entries and a perm that is not a
// permutation raise ValueError (TORCH_CHECK_VALUE) before any write.
//
// CUDA kernels of the same schemas: csrc/cuda/token_ops.cu.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace vpengine {
namespace {

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

// Outputs of this size skip the cache (streaming stores) and ask for huge pages.
constexpr int64_t kLargeBytes = int64_t{8} << 20;

// at::empty, plus MADV_HUGEPAGE on the 2 MiB-aligned interior of a large
// buffer before its first touch: a fresh 100 MB output otherwise takes 25K
// page faults, which measured ~60% of a row copy's time on a 2-core VM (THP
// in "madvise" mode). Best effort: an error only leaves small pages.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = static_cast<int64_t>(out.nbytes());
  if (bytes >= kLargeBytes) {
    constexpr uintptr_t kHuge = uintptr_t{2} << 20;
    const uintptr_t p = reinterpret_cast<uintptr_t>(out.mutable_data_ptr());
    const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t end = (p + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
    if (end > begin) {
      madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    }
  }
#endif
  return out;
}

// Copy (src) or zero (src == nullptr) one row of n bytes. Streaming stores
// skip the read-for-ownership of the destination line: an output far larger
// than the cache is written once and read by the next op from DRAM anyway.
inline void put_row(char* dst, const char* src, int64_t n, bool stream) {
#if defined(__x86_64__)
  if (stream) {  // dst 16-byte aligned, n a multiple of 16 (checked by the caller)
    const __m128i zero = _mm_setzero_si128();
    for (int64_t i = 0; i < n; i += 16) {
      const __m128i v = src ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)) : zero;
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), v);
    }
    return;
  }
#endif
  if (src) {
    std::memcpy(dst, src, n);
  } else {
    std::memset(dst, 0, n);
  }
}

// Source rows are scattered at random: start loading the next one while the
// current one is copied (the hardware prefetcher only follows a row once it
// has seen a few of its lines).
inline void prefetch_row(const char* row, int64_t n) {
  if (row == nullptr) return;
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(row + i);
}

inline void stream_fence(bool stream) {
#if defined(__x86_64__)
  if (stream) _mm_sfence();  // order the streaming stores before the op returns
#endif
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
      put_row(reinterpret_cast<char*>(o + d0), reinterpret_cast<const char*>(buf), n * sizeof(scalar_t), true);
    }
  }
}

template <typename scalar_t>
void add_row(scalar_t* o, const scalar_t* a, const scalar_t* p, int64_t D, bool stream) {
  add_row_generic(o, a, p, D, stream);
}

#if defined(__x86_64__)
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
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

inline uint16_t bf16_add_bits(uint16_t a, uint16_t p) {
  const float s = bf16_bits_to_float(a) + bf16_bits_to_float(p);
  const uint32_t u = std::bit_cast<uint32_t>(s);
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

template <>
void add_row<c10::BFloat16>(c10::BFloat16* o, const c10::BFloat16* a, const c10::BFloat16* p, int64_t D,
                            bool stream) {
  static_assert(sizeof(c10::BFloat16) == 2);
  const uint16_t* ab = reinterpret_cast<const uint16_t*>(a);
  const uint16_t* pb = reinterpret_cast<const uint16_t*>(p);
  uint16_t* ob = reinterpret_cast<uint16_t*>(o);
#ifdef VPENGINE_AVX2
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
  const bool stream = static_cast<int64_t>(out_BID.nbytes()) >= kLargeBytes && row_bytes % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(op) % 16 == 0;
  // About 64 KiB per task: below that, waking a thread costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / row_bytes);
  auto source = [&](int64_t r) -> const char* {
    const int64_t s = src[r];
    return s >= 0 ? xp + (r / I) * sb + s * sn : fp;
  };
  if (!pos) {
    at::parallel_for(0, B * I, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (r + 1 < end) prefetch_row(source(r + 1), row_bytes);
        put_row(op + r * row_bytes, source(r), row_bytes, stream);
      }
      stream_fence(stream);
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

at::Tensor decoder_input_meta(const at::Tensor& enc_kept, const at::Tensor& keep_idx, const at::Tensor& mask_token,
                              const at::Tensor& perm, const at::Tensor& pos) {
  check_tokens("decoder_input_native", "enc_kept", enc_kept);
  return at::empty({enc_kept.size(0), perm.size(1), enc_kept.size(2)}, enc_kept.options());
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
  m.impl("decoder_input_native", &vpengine::decoder_input_cpu);
}

TORCH_LIBRARY_IMPL(vpengine, Meta, m) {
  m.impl("token_scatter_native", &vpengine::token_scatter_meta);
  m.impl("token_shuffle_native", &vpengine::token_shuffle_meta);
  m.impl("token_unshuffle_native", &vpengine::token_unshuffle_meta);
  m.impl("decoder_input_native", &vpengine::decoder_input_meta);
}
