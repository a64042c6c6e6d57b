// Row-copy helpers shared by the CPU token kernels (token_gather.cpp,
// token_rows.cpp): output allocation and the per-row copy.
//
// The token ops are pure data movement over rows of D * itemsize contiguous
// bytes (3 KiB for fp32 at D = 768), read from random source rows and written
// in order. On a 2-core VM (B=8, N=4096, D=768) a plain memcpy per row lost
// its time to three costs, each handled here:
//
//  * first-touch page faults of a fresh output (25K per 100 MB of 4 KiB
//    pages, each zeroing its page): empty_output reuses pooled blocks;
//  * the read-for-ownership of every destination line: an output far larger
//    than the cache is written once and read back by the next op from DRAM
//    anyway, so put_row writes it with streaming (non-temporal) stores;
//  * the latency of each random source row: put_row prefetches the next
//    row line by line while it copies the current one.
//
// Everything here is header-only and inline: each kernel file is its own
// translation unit of the same library.

#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "output_pool.h"

namespace vpengine::rows {

// Outputs of this size skip the cache (streaming stores).
constexpr int64_t kLargeBytes = int64_t{8} << 20;

// About 64 KiB per parallel_for task: below that, waking a thread costs more
// than it saves.
inline int64_t row_grain(int64_t row_bytes) {
  return row_bytes > 0 ? std::max<int64_t>(1, (int64_t{1} << 16) / row_bytes) : 1;
}

// Outputs come from the large-output pool (output_pool.h): a reused block has
// its pages already mapped (huge pages where the kernel gave them), where a
// fresh 100 MB buffer takes 25K first-touch faults, each zeroing a page the
// kernel then overwrites anyway.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return pool::empty_large(sizes, options);
}

// Whether put_row may stream into out: a large output, rows a whole number of
// 16-byte vectors and a 16-byte aligned base (so every row start is aligned).
inline bool use_streaming(const at::Tensor& out, int64_t row_bytes) {
#if defined(__x86_64__)
  return static_cast<int64_t>(out.nbytes()) >= kLargeBytes && row_bytes % 16 == 0 &&
         reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
#else
  return false;
#endif
}

// Source rows are scattered at random: start loading a row before it is
// copied (the hardware prefetcher only follows a row once it has seen a few
// of its lines). Used for a task's first row and on the non-streaming paths.
inline void prefetch_row(const char* row, int64_t n) {
  if (row == nullptr) return;
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(row + i);
}

#if defined(__x86_64__)
// The streaming copy in 32-byte vectors (AVX), for rows whose every 64-byte
// line is two aligned 32-byte halves. On an AMD EPYC (Zen) VM, 2 threads,
// a B=8, N=4096, K=819, D=768 fp32 gather ran 1.2x (source rows from DRAM)
// to 1.7x (from L3) faster with them than with 16-byte streaming stores,
// measured side by side in a standalone copy loop.
__attribute__((target("avx"))) inline void stream_row_avx(char* dst, const char* src, int64_t n,
                                                           const char* next) {
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t line = 0; line < n; line += 64) {
    if (next) _mm_prefetch(next + line, _MM_HINT_T0);
    const __m256i a = src ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + line)) : zero;
    const __m256i b = src ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + line + 32)) : zero;
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + line), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + line + 32), b);
  }
}

// Two rows at once, line by line: each line step keeps four source lines and
// two next-row prefetches in flight instead of two and one. On the same VM
// and gather (flushed cache between calls, like the benchmark's round-robin)
// this ran 1.08-1.13x faster than one row at a time (1.56 vs 1.73 ms, fp32
// D=768; 1.61 vs 1.79 ms, D=1024); three or more rows at once were no faster
// at D=1024. dst0 + n is the second row's destination.
__attribute__((target("avx"))) inline void stream_row_pair_avx(char* dst0, const char* src0, const char* src1,
                                                                int64_t n, const char* next0, const char* next1) {
  const __m256i zero = _mm256_setzero_si256();
  char* dst1 = dst0 + n;
  for (int64_t line = 0; line < n; line += 64) {
    if (next0) _mm_prefetch(next0 + line, _MM_HINT_T0);
    if (next1) _mm_prefetch(next1 + line, _MM_HINT_T0);
    const __m256i a = src0 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src0 + line)) : zero;
    const __m256i b = src0 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src0 + line + 32)) : zero;
    const __m256i c = src1 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src1 + line)) : zero;
    const __m256i d = src1 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src1 + line + 32)) : zero;
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst0 + line), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst0 + line + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst1 + line), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst1 + line + 32), d);
  }
}

inline bool cpu_has_avx() {
  static const bool yes = __builtin_cpu_supports("avx");
  return yes;
}
#endif

// Copy (src) or zero (src == nullptr) one row of n bytes, and prefetch the
// row copied next (`next`, nullptr for none). Streaming (use_streaming)
// skips the read-for-ownership of the destination lines, and the prefetch
// of next's line i is issued while line i is copied: spread over the copy it
// keeps the line-fill buffers busy without stalling on them, which measured
// 1.2x (fp32) over prefetching the whole next row up front on one core.
inline void put_row(char* dst, const char* src, int64_t n, bool stream, const char* next) {
#if defined(__x86_64__)
  if (stream && n % 64 == 0 && reinterpret_cast<uintptr_t>(dst) % 32 == 0 && cpu_has_avx()) {
    stream_row_avx(dst, src, n, next);
    return;
  }
  if (stream) {
    const __m128i zero = _mm_setzero_si128();
    for (int64_t line = 0; line < n; line += 64) {
      if (next) _mm_prefetch(next + line, _MM_HINT_T0);
      const int64_t line_end = std::min<int64_t>(line + 64, n);
      for (int64_t i = line; i < line_end; i += 16) {
        const __m128i v = src ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)) : zero;
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), v);
      }
    }
    return;
  }
#endif
  prefetch_row(next, n);
  if (src) {
    std::memcpy(dst, src, n);
  } else {
    std::memset(dst, 0, n);
  }
}

// Called once at the end of each parallel_for task that streamed: orders the
// streaming stores before the op returns (they are weakly ordered).
inline void stream_fence(bool stream) {
#if defined(__x86_64__)
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

// Output rows [begin, end) of n bytes each, row r at dst + r * n copied from
// source(r) (nullptr: zeros): one parallel_for task of a row gather. Rows of
// whole 64-byte lines that stream go two at a time (stream_row_pair_avx),
// the rest one at a time through put_row.
template <class Source>
inline void copy_rows(char* dst, int64_t begin, int64_t end, int64_t n, bool stream, const Source& source) {
  auto next = [&](int64_t r) -> const char* { return r < end ? source(r) : nullptr; };
  prefetch_row(source(begin), n);
  int64_t r = begin;
#if defined(__x86_64__)
  if (stream && n % 64 == 0 && reinterpret_cast<uintptr_t>(dst) % 32 == 0 && cpu_has_avx()) {
    prefetch_row(next(begin + 1), n);
    for (; r + 1 < end; r += 2) {
      stream_row_pair_avx(dst + r * n, source(r), source(r + 1), n, next(r + 2), next(r + 3));
    }
  }
#endif
  for (; r < end; ++r) {
    put_row(dst + r * n, source(r), n, stream, next(r + 1));
  }
  stream_fence(stream);
}

}  // namespace vpengine::rows
