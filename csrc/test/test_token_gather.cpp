// C++ test of vpengine::token_gather_native through the dispatcher, as a C++
// user of the CMake library would call it (run by ctest; see CMakeLists.txt).
//
// Checks: the schema is registered; CPU values equal the definition
// out[b, k, :] = x[b, idx[b, k], :] for fp32, fp64 and fp16/bf16 bit patterns
// and for a strided (transposed) x; a bad index throws c10::ValueError naming
// it; the Meta kernel gives the shape; on a CUDA build with a device, CUDA
// matches CPU and a bad index raises (with VPENGINE_CHECK_INDICES=1).
//
// Tensors are built by hand from raw buffers so the test needs only a few
// ATen headers (ATen/ATen.h would double the compile time).

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#ifdef VPENGINE_TEST_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

int g_failures = 0;

#define EXPECT(cond, what)                                                   \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::cerr << "FAIL " << __LINE__ << ": " << (what) << std::endl;       \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)

using GatherFn = at::Tensor(const at::Tensor&, const at::Tensor&);

c10::TypedOperatorHandle<GatherFn> gather_op() {
  auto handle = c10::Dispatcher::singleton().findSchema({"vpengine::token_gather_native", ""});
  if (!handle) {
    std::cerr << "FAIL: vpengine::token_gather_native is not registered "
                 "(the library was not loaded?)" << std::endl;
    std::exit(1);
  }
  return handle->typed<GatherFn>();
}

// x[b, n, d] = 1000 b + 10 n + d: every element names its position.
at::Tensor make_x(int64_t B, int64_t N, int64_t D, at::ScalarType dtype) {
  at::Tensor x = at::empty({B, N, D}, at::TensorOptions().dtype(at::kDouble));
  double* p = x.mutable_data_ptr<double>();
  for (int64_t i = 0; i < B * N * D; ++i) {
    p[i] = 1000.0 * (i / (N * D)) + 10.0 * (i / D % N) + static_cast<double>(i % D);
  }
  return x.to(dtype);
}

at::Tensor make_idx(int64_t B, int64_t K, const int64_t* values) {
  at::Tensor idx = at::empty({B, K}, at::TensorOptions().dtype(at::kLong));
  std::memcpy(idx.mutable_data_ptr<int64_t>(), values, sizeof(int64_t) * B * K);
  return idx;
}

// Element-wise comparison against the definition, in double.
bool matches_definition(const at::Tensor& out, const at::Tensor& x, const at::Tensor& idx) {
  const at::Tensor o = out.to(at::kDouble).contiguous();
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), K = idx.size(1);
  if (out.size(0) != B || out.size(1) != K || out.size(2) != D) return false;
  const double* po = o.const_data_ptr<double>();
  const double* px = xd.const_data_ptr<double>();
  const int64_t* pi = idx.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t d = 0; d < D; ++d)
        if (po[(b * K + k) * D + d] != px[(b * N + pi[b * K + k]) * D + d]) return false;
  return true;
}

bool throws_value_error(const at::Tensor& x, const at::Tensor& idx, const std::string& needle) {
  try {
    gather_op().call(x, idx);
  } catch (const c10::ValueError& e) {
    const bool named = std::string(e.what()).find(needle) != std::string::npos;
    if (!named) std::cerr << "message does not name " << needle << ": " << e.what() << std::endl;
    return named;
  } catch (const std::exception& e) {
    std::cerr << "wrong exception type: " << e.what() << std::endl;
    return false;
  }
  return false;
}

}  // namespace

int main() {
  const auto op = gather_op();
  const int64_t idx_vals[] = {4, 0, 2, 1, 1, 3};  // B=2, K=3 of N=5, with a repeat
  const at::Tensor idx = make_idx(2, 3, idx_vals);

  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    const at::Tensor x = make_x(2, 5, 7, dtype);
    const at::Tensor out = op.call(x, idx);
    EXPECT(out.scalar_type() == dtype, "output dtype");
    EXPECT(out.is_contiguous(), "output contiguous");
    EXPECT(matches_definition(out, x, idx), std::string("values, dtype ") + c10::toString(dtype));
  }

  // Strided input: x is the transpose of a [B, D, N] tensor (rows not contiguous).
  const at::Tensor x_t = make_x(2, 7, 5, at::kFloat).transpose(1, 2);
  EXPECT(matches_definition(op.call(x_t, idx), x_t, idx), "values, transposed x");

  const at::Tensor x = make_x(2, 5, 7, at::kFloat);
  const int64_t bad_vals[] = {0, 5, 1, 0, 0, 0};
  EXPECT(throws_value_error(x, make_idx(2, 3, bad_vals), "keep_idx[0, 1] = 5"), "index N rejected");
  const int64_t neg_vals[] = {0, 1, 1, 0, 0, -1};
  EXPECT(throws_value_error(x, make_idx(2, 3, neg_vals), "keep_idx[1, 2] = -1"), "negative index rejected");
  EXPECT(throws_value_error(x.select(2, 0), idx, "must be 3-D"), "2-D x rejected");

  const at::Tensor m = op.call(x.to(c10::Device(c10::kMeta)), idx.to(c10::Device(c10::kMeta)));
  EXPECT(m.is_meta() && m.size(0) == 2 && m.size(1) == 3 && m.size(2) == 7, "meta shape");

#ifdef VPENGINE_TEST_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
    const c10::Device cuda(c10::kCUDA, 0);
    for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      const at::Tensor xc = make_x(2, 5, 64, dtype);
      const at::Tensor out = op.call(xc.to(cuda), idx.to(cuda)).cpu();
      EXPECT(matches_definition(out, xc, idx), std::string("cuda values, dtype ") + c10::toString(dtype));
    }
    setenv("VPENGINE_CHECK_INDICES", "1", 1);
    EXPECT(throws_value_error(x.to(cuda), make_idx(2, 3, bad_vals).to(cuda), "keep_idx[0, 1] = 5"),
           "cuda index N rejected");
    std::cout << "cuda checks ran on " << devices << " device(s)" << std::endl;
  } else {
    std::cout << "cuda build, no device: cuda checks skipped" << std::endl;
  }
#endif

  if (g_failures == 0) std::cout << "test_token_gather: all checks passed" << std::endl;
  return g_failures == 0 ? 0 : 1;
}
