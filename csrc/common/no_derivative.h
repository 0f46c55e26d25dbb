// Registration of torch's "derivative not implemented" autograd kernel for one leankern op (no_derivative.cpp).
#pragma once
#include <string>

namespace leankern {

// op: the name in the leankern namespace (e.g. "vocab_gather_lm_head"), already defined. Call once per op.
void register_no_derivative(const std::string& op);

}  // namespace leankern
