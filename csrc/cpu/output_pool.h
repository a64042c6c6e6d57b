// A cache of large CPU output buffers, for the row-copy kernels.
//
// The token kernels write every byte of a fresh output with streaming stores
// and never read it. A fresh buffer of tens of MB from malloc is either new
// memory from the kernel, which zeroes each page on first touch (a second
// full write of the output, plus a fault per page), or a recycled heap chunk
// of 4 KiB pages. On a 2-core VM (B=8, N=4096, K=819, D=768, fp32) that first
// touch measured 30-45% of the gather's time. A training step frees and
// re-allocates the same sizes every step, so this pool keeps freed blocks
// (2 MiB-aligned, transparent huge pages asked for) and hands them back, as
// PyTorch's CUDA caching allocator does for device memory.
//
// Bounded: idle blocks are kept up to VPENGINE_CPU_POOL_MB (default 1024,
// read once; 0 turns caching off) and torch.ops.vpengine.cpu_pool_release()
// returns them all to the system. Linux only; elsewhere empty_large is
// at::empty.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace vpengine::pool {

// Outputs of at least this many bytes come from the pool (below it, malloc's
// own heap recycles memory well enough).
constexpr int64_t kPoolMinBytes = int64_t{1} << 20;

// An uninitialized tensor of `sizes`, from the pool when it is at least
// kPoolMinBytes (contiguous, options' dtype, CPU).
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace vpengine::pool
