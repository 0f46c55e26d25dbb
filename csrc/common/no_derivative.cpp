// Autograd for the leankern ops that have no derivative (every op whose Python spec names no backward; see
// leankern.core.register_op): torch's "not implemented" autograd kernel on the op's Autograd key. The forward runs as
// before, also when an input requires grad; a backward through the op raises "the derivative for 'leankern::<op>'
// is not implemented" instead of torch's default for ops without an autograd kernel, a deprecation warning and
// silently None gradients. The kernel is C++ (boxed, no Python per call), as torch's default fallback is.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <mutex>
#include <string>

#include "common/no_derivative.h"

namespace leankern {

void register_no_derivative(const std::string& op) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  // one IMPL library for the namespace's Autograd key, alive for the process (its registrations end with it)
  static torch::Library lib(torch::Library::IMPL, "leankern", c10::DispatchKey::Autograd, __FILE__, __LINE__);
  lib.impl(op.c_str(), torch::autograd::autogradNotImplementedFallback());
}

}  // namespace leankern
