// The large-output cache of output_pool.h: a c10::Allocator over mmap-ed,
// 2 MiB-aligned blocks, keeping freed blocks for reuse up to a byte limit.
//
// Ops (catch-all kernels, no tensor arguments):
//   torch.ops.vpengine.cpu_pool_stats() -> [cached bytes, cached blocks,
//       limit bytes, reuses, fresh maps]
//   torch.ops.vpengine.cpu_pool_release()  unmaps every cached block

#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>
#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace vpengine::pool {
namespace {

#if defined(__linux__)

constexpr size_t kHuge = size_t{2} << 20;

// Read once, at the first large allocation (a bad value raises there, not at
// library load).
size_t limit_bytes() {
  static const size_t limit = [] {
    const char* raw = std::getenv("VPENGINE_CPU_POOL_MB");
    if (raw == nullptr || *raw == '\0') return size_t{1024} << 20;
    char* end = nullptr;
    const long long mb = std::strtoll(raw, &end, 10);
    TORCH_CHECK_VALUE(
        end != raw && *end == '\0' && mb >= 0 && mb < (int64_t{1} << 40),
        "VPENGINE_CPU_POOL_MB must be a whole number of MiB >= 0 (0 turns the cache off); got '", raw, "'");
    return static_cast<size_t>(mb) << 20;
  }();
  return limit;
}

struct Block {
  void* ptr;
  size_t bytes;
};

class Pool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    const size_t bytes = (std::max<size_t>(nbytes, 1) + kHuge - 1) & ~(kHuge - 1);
    Block* block = take(bytes);
    if (block == nullptr) block = map(bytes);
    return {block->ptr, block, &Pool::give_back, c10::Device(c10::DeviceType::CPU)};
  }

  // The context is not the data pointer, so raw_allocate is not offered.
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(free_.size()),
            static_cast<int64_t>(limit_bytes()), reuses_, maps_};
  }

  void release() {
    std::multimap<size_t, Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
      cached_ = 0;
    }
    for (auto& [bytes, block] : drop) unmap(block);
  }

  static Pool& get() {
    // Leaked on purpose: tensors may be freed after static destructors ran.
    static Pool* pool = new Pool();
    return *pool;
  }

 private:
  // A fork while another thread holds the lock (its op releases the GIL)
  // would leave the child's copy locked for good: its first pooled output
  // would hang. Hold the lock across fork() and release it on both sides.
  Pool() { pthread_atfork(&Pool::lock_for_fork, &Pool::unlock_after_fork, &Pool::unlock_after_fork); }
  static void lock_for_fork() { get().mutex_.lock(); }
  static void unlock_after_fork() { get().mutex_.unlock(); }

  // A cached block of `bytes`, or one at most 1/8 larger (nearby shapes
  // share blocks rather than each holding its own).
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > bytes + bytes / 8) return nullptr;
    Block* block = it->second;
    cached_ -= it->first;
    free_.erase(it);
    ++reuses_;
    return block;
  }

  Block* map(size_t bytes) {
    void* raw = mmap_bytes(bytes + kHuge);
    if (raw == nullptr) {  // the cache may be what fills memory
      release();
      raw = mmap_bytes(bytes + kHuge);
    }
    TORCH_CHECK_WITH(
        OutOfMemoryError, raw != nullptr, "vpengine CPU output pool: out of memory allocating ", bytes,
        " bytes");
    // Trim to a 2 MiB-aligned run, so that every page can be a huge page.
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kHuge - 1) & ~(uintptr_t{kHuge} - 1);
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t tail = aligned + bytes;
    const uintptr_t end = start + bytes + kHuge;
    if (end > tail) munmap(reinterpret_cast<void*>(tail), end - tail);
    void* ptr = reinterpret_cast<void*>(aligned);
#if defined(MADV_HUGEPAGE)
    madvise(ptr, bytes, MADV_HUGEPAGE);  // best effort: failure leaves small pages
#endif
    std::lock_guard<std::mutex> lock(mutex_);
    ++maps_;
    return new Block{ptr, bytes};
  }

  static void* mmap_bytes(size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }

  static void unmap(Block* block) {
    munmap(block->ptr, block->bytes);
    delete block;
  }

  static void give_back(void* ctx) {
    Block* block = static_cast<Block*>(ctx);
    Pool& pool = get();
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      if (pool.cached_ + block->bytes <= limit_bytes()) {
        pool.free_.emplace(block->bytes, block);
        pool.cached_ += block->bytes;
        return;
      }
    }
    unmap(block);
  }

  std::mutex mutex_;
  std::multimap<size_t, Block*> free_;  // idle blocks by size
  size_t cached_ = 0;
  int64_t reuses_ = 0;
  int64_t maps_ = 0;
};

std::vector<int64_t> cpu_pool_stats() { return Pool::get().stats(); }
void cpu_pool_release() { Pool::get().release(); }

#else  // not Linux: no pool

std::vector<int64_t> cpu_pool_stats() { return {0, 0, 0, 0, 0}; }
void cpu_pool_release() {}

#endif

}  // namespace

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__)
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  if (bytes >= kPoolMinBytes && options.device().is_cpu()) {
    limit_bytes();  // a bad VPENGINE_CPU_POOL_MB raises here, not inside a deleter
    return at::detail::empty_generic(
        sizes, &Pool::get(), c10::DispatchKeySet(c10::DispatchKey::CPU), options.dtype().toScalarType(),
        std::nullopt);
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace vpengine::pool

TORCH_LIBRARY_FRAGMENT(vpengine, m) {
  m.def("cpu_pool_stats() -> int[]", &vpengine::pool::cpu_pool_stats);
  m.def("cpu_pool_release() -> ()", &vpengine::pool::cpu_pool_release);
}
