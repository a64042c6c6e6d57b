// Build facts of one compiled vpengine library, and its Python module entry.
//
// Compiled into each library (vpengine._C, vpengine._C_cuda, the CMake
// library). vpengine/_ext.py reads the marker string straight out of the .so
// file BEFORE loading it: a library built against another torch has to become
// a printed reason, and dlopen-ing it could already crash (ABI mismatch), so
// the facts must be readable without running any of its code.
//
// The build passes VPENGINE_TORCH_VERSION (torch.__version__ it compiled
// against) and, for CUDA builds, VPENGINE_CUDA_ARCHS ("80,90a") as bare tokens,
// stringified here: torch's ninja writer shell-quotes nvcc flags but not C++
// flags, so quoted string macros would not survive both.

#define VPENGINE_STR2(...) #__VA_ARGS__
#define VPENGINE_STR(...) VPENGINE_STR2(__VA_ARGS__)

#ifdef VPENGINE_TORCH_VERSION
#define VPENGINE_TORCH_VERSION_STR VPENGINE_STR(VPENGINE_TORCH_VERSION)
#else
#define VPENGINE_TORCH_VERSION_STR "unknown"
#endif
#ifdef VPENGINE_CUDA_ARCHS
#define VPENGINE_CUDA_ARCHS_STR VPENGINE_STR(VPENGINE_CUDA_ARCHS)
#else
#define VPENGINE_CUDA_ARCHS_STR ""
#endif
#ifdef TORCH_EXTENSION_NAME
#define VPENGINE_EXT_NAME "vpengine." VPENGINE_STR(TORCH_EXTENSION_NAME)
#else
#define VPENGINE_EXT_NAME "vpengine_native"
#endif

#ifdef VPENGINE_WITH_CUDA
#include <cuda_runtime_api.h>
// CUDART_VERSION is 1000 * major + 10 * minor, e.g. 13000.
#define VPENGINE_CUDA_FIELD "\"cuda_runtime\": " VPENGINE_STR(CUDART_VERSION)
#else
#define VPENGINE_CUDA_FIELD "\"cuda_runtime\": null"
#endif

// One JSON object after a fixed prefix, NUL-terminated. `used` keeps it in
// .rodata although nothing references it.
__attribute__((used)) static const char kVpengineBuildInfo[] =
    "VPENGINE_BUILD_INFO:{"
    "\"ext\": \"" VPENGINE_EXT_NAME "\", "
    "\"torch\": \"" VPENGINE_TORCH_VERSION_STR "\", "
    VPENGINE_CUDA_FIELD ", "
    "\"cuda_archs\": \"" VPENGINE_CUDA_ARCHS_STR "\"}";

#ifdef VPENGINE_PYTHON_MODULE
// An empty module, so that `import vpengine._C` works too; the ops register
// through static initializers when the library is loaded, by either path.
#include <Python.h>

#define VPENGINE_CAT2(a, b) a##b
#define VPENGINE_CAT(a, b) VPENGINE_CAT2(a, b)

PyMODINIT_FUNC VPENGINE_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef def = {
      PyModuleDef_HEAD_INIT, VPENGINE_EXT_NAME,
      "vpengine native ops; use them through torch.ops.vpengine", -1, nullptr};
  return PyModule_Create(&def);
}
#endif
