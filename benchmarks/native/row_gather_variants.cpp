// Row-gather copy strategies side by side, outside PyTorch: what the CPU
// token kernels' copy loop (csrc/cpu/row_copy.h) was chosen from.
//
//   g++ -O2 -fopenmp -o /tmp/row_gather_variants benchmarks/native/row_gather_variants.cpp
//   /tmp/row_gather_variants N K D itemsize     (e.g. 4096 819 768 4)
//
// B = 8 samples of N rows of D * itemsize bytes; K sorted random rows of each
// are copied into a reused, already-mapped output, on 2 threads, each taking
// one half of the rows (as at::parallel_for does). Before every call a 96 MiB
// sweep evicts the caches, as the other contenders of `vpengine bench` do
// between turns; variants run round-robin. Rows must be whole 64-byte lines.
// Variants:
//   memcpy          a plain memcpy per row, what index_select does
//   stream_1row     32-byte streaming stores, the next row prefetched line by line
//   stream_2rows    two rows at a time, the next two prefetched (the kernels' choice)
//   stream_4rows    four rows at a time
//   sequential      stream_1row over consecutive rows: the ceiling for this size
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

using Loop = void (*)(char*, const char*, const int64_t*, int64_t, int64_t, int64_t);

static void copy_memcpy(char* out, const char* x, const int64_t* rows, int64_t lo, int64_t hi, int64_t n) {
  for (int64_t i = lo; i < hi; ++i) std::memcpy(out + i * n, x + rows[i] * n, n);
}

// G rows at a time: line by line, prefetch the next G rows' line, load this
// line of the G current rows, stream it out.
template <int G>
__attribute__((target("avx"))) static void copy_streaming(char* out, const char* x, const int64_t* rows, int64_t lo,
                                                          int64_t hi, int64_t n) {
  for (int64_t l = 0; l < n * G && lo + l / n < hi; l += 64) _mm_prefetch(x + rows[lo + l / n] * n + l % n, _MM_HINT_T0);
  int64_t i = lo;
  for (; i + G <= hi; i += G) {
    const char* src[G];
    const char* next[G];
    for (int g = 0; g < G; ++g) {
      src[g] = x + rows[i + g] * n;
      next[g] = i + G + g < hi ? x + rows[i + G + g] * n : nullptr;
    }
    for (int64_t l = 0; l < n; l += 64) {
      for (int g = 0; g < G; ++g)
        if (next[g]) _mm_prefetch(next[g] + l, _MM_HINT_T0);
      __m256i a[G], b[G];
      for (int g = 0; g < G; ++g) {
        a[g] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[g] + l));
        b[g] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[g] + l + 32));
      }
      for (int g = 0; g < G; ++g) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(out + (i + g) * n + l), a[g]);
        _mm256_stream_si256(reinterpret_cast<__m256i*>(out + (i + g) * n + l + 32), b[g]);
      }
    }
  }
  for (; i < hi; ++i) copy_streaming<1>(out, x, rows, i, i + 1, n);
  _mm_sfence();
}

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s N K D itemsize\n", argv[0]);
    return 2;
  }
  const int64_t B = 8, N = std::atoll(argv[1]), K = std::atoll(argv[2]), n = std::atoll(argv[3]) * std::atoll(argv[4]);
  if (N < 1 || K < 1 || K > N || n < 64 || n % 64) {
    std::fprintf(stderr, "need 1 <= K <= N and rows (D * itemsize) of whole 64-byte lines\n");
    return 2;
  }
  const int reps = 40;
  const size_t sweep_bytes = size_t{96} << 20;
  auto buffer = [](size_t bytes, int value) {
    char* p = static_cast<char*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
    std::memset(p, value, bytes);  // mapped before timing
    return p;
  };
  char* x = buffer(B * N * n, 1);
  char* out = buffer(B * K * n, 0);
  char* sweep = buffer(sweep_bytes, 2);
  std::vector<int64_t> rows(B * K), consecutive(B * K);
  std::mt19937 rng(0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> p(N);
    for (int64_t i = 0; i < N; ++i) p[i] = i;
    std::shuffle(p.begin(), p.end(), rng);
    std::sort(p.begin(), p.begin() + K);
    for (int64_t k = 0; k < K; ++k) rows[b * K + k] = b * N + p[k], consecutive[b * K + k] = b * K + k;
  }
  struct Variant { const char* name; Loop loop; const int64_t* rows; };
  const Variant variants[] = {{"memcpy", copy_memcpy, rows.data()}, {"stream_1row", copy_streaming<1>, rows.data()},
                              {"stream_2rows", copy_streaming<2>, rows.data()}, {"stream_4rows", copy_streaming<4>, rows.data()},
                              {"sequential", copy_streaming<1>, consecutive.data()}};
  const int count = sizeof(variants) / sizeof(variants[0]);
  std::vector<std::vector<double>> ms(count);
  const int64_t R = B * K;
  for (int r = 0; r < reps; ++r) {
    for (int v = 0; v < count; ++v) {
#pragma omp parallel for num_threads(2)
      for (size_t i = 0; i < sweep_bytes; i += 64) sweep[i]++;
      const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(2)
      {
        const int t = omp_get_thread_num();
        variants[v].loop(out, x, variants[v].rows, R * t / 2, R * (t + 1) / 2, n);
      }
      ms[v].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  std::printf("B=8 N=%lld K=%lld row %lld bytes, median of %d calls (p20-p80)\n", (long long)N, (long long)K, (long long)n, reps);
  for (int v = 0; v < count; ++v) std::sort(ms[v].begin(), ms[v].end());
  for (int v = 0; v < count; ++v) {
    const double med = ms[v][reps / 2];
    std::printf("%-13s %.3f ms (%.3f-%.3f)  %5.1f GB/s  %.2fx memcpy\n", variants[v].name, med, ms[v][reps / 5],
                ms[v][reps * 4 / 5], 2.0 * R * n / (med * 1e6), ms[0][reps / 2] / med);
  }
  return 0;
}
