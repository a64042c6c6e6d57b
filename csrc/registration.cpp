// The one TORCH_LIBRARY block of the `vpengine` namespace.
//
// PyTorch allows exactly one TORCH_LIBRARY(ns, m) per namespace (the
// dispatcher refuses a second one at load time), so every op family declares
// its schemas with TORCH_LIBRARY_FRAGMENT(vpengine, m) in its own
// csrc/cpu/<stem>.cpp and this file only claims the namespace. Fragments and
// this block may register in any order (static initializers of one library run
// in link order), and Python's torch.library.custom_op("vpengine::...") uses a
// FRAGMENT too, so Python ops and these native ops coexist whichever loads
// first (tests/test_build.py checks both orders).
//
// Native op names end in `_native` (vpengine::token_gather_native) so that
// they never collide with the public Python custom ops (vpengine::token_gather)
// that wrap them with autograd and backend choice.

#include <torch/library.h>

// Empty on purpose: schemas live beside their CPU kernels (see above).
TORCH_LIBRARY(vpengine, m) {}
