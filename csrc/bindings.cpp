// The leankern C++ op schemas (one TORCH_LIBRARY for the whole package) and the small Python
// module leankern._C (CPU-feature introspection and the ISA switch).
//
// Kernels register per device elsewhere: CPU in csrc/cpu/<family>.cpp, CUDA in
// csrc/cuda/*_binding.cpp. The public ops (torch.ops.leankern.mx_quantize, ...) are Python
// custom_ops in python/leankern/ops/ that call these *_cpp ops; the arguments and results of each
// are exactly those of the reference in python/leankern/ref/.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/mx_common.h"

TORCH_LIBRARY(leankern, m) {
  // Quantize x [..., K] (fp32/bf16/fp16) to an MX/NV block format (ref: mx_quantize_ref).
  // Returns (codes [..., K] or [..., K/2] for 4-bit, scales [..., K/block_size] uint8 E8M0 or
  // float8_e4m3fn, global_scale fp32 []). rand_bits int32 like x selects stochastic rounding;
  // global_scale is the static NV tensor scale (computed from x's finite amax when None).
  m.def(
      "mx_quantize_cpp(Tensor x, str fmt, int block_size, str scale_mode, Tensor? rand_bits, "
      "Tensor? global_scale) -> (Tensor, Tensor, Tensor)");
  // Dequantize codes + scales (+ NV global_scale) to [..., K] in out_dtype (ref: mx_dequantize_ref).
  m.def(
      "mx_dequantize_cpp(Tensor codes, Tensor scales, Tensor global_scale, str fmt, int block_size, "
      "ScalarType out_dtype) -> Tensor");
  // Fast Walsh-Hadamard transform over each chunk_size chunk of the last dim, * scale, * signs
  // (ref: hadamard_transform_ref); output in x's dtype.
  m.def("hadamard_transform_cpp(Tensor x, int chunk_size, float scale, Tensor? signs) -> Tensor");
}

namespace {

// The mirrored format table, for tests that compare it with leankern.formats.
std::vector<pybind11::dict> format_table() {
  std::vector<pybind11::dict> rows;
  for (const auto& f : leankern::kFormats) {
    const leankern::ElemSpec e = leankern::elem_spec(f.elem);
    pybind11::dict d;
    d["name"] = f.name;
    d["element"] = leankern::kElemNames[f.elem];
    d["bits"] = e.bits;
    d["is_int"] = (bool)e.is_int;
    d["mbits"] = e.mbits;
    d["bias"] = e.bias;
    d["max_code"] = e.max_code;
    d["sign_bit"] = e.sign_bit;
    d["default_block_size"] = f.default_block;
    d["scale_kind"] = f.is_nv ? "e4m3" : "e8m0";
    rows.push_back(d);
  }
  return rows;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "leankern C++ extension: registers torch.ops.leankern.*_cpp and exposes CPU-feature dispatch.";
  m.def("cpu_features", &leankern::cpu::feature_string,
        "Space-separated CPU features relevant to the kernels (e.g. 'avx2 f16c avx512f ...').");
  m.def(
      "cpu_isa", [] { return std::string(leankern::cpu::isa_name(leankern::cpu::active_isa())); },
      "ISA the C++ CPU kernels currently dispatch to: 'avx512' | 'avx2' | 'scalar'.");
  m.def(
      "supported_isas",
      [] {
        std::vector<std::string> out;
        for (auto isa : {leankern::cpu::Isa::kAvx512, leankern::cpu::Isa::kAvx2, leankern::cpu::Isa::kScalar})
          if (leankern::cpu::isa_supported(isa)) out.push_back(leankern::cpu::isa_name(isa));
        return out;
      },
      "ISAs this CPU can run, best first.");
  m.def("set_cpu_isa", &leankern::cpu::set_active_isa, pybind11::arg("name"),
        "Force the C++ CPU kernels onto 'avx512', 'avx2' or 'scalar' ('auto' = best supported). "
        "ValueError for an unknown name, RuntimeError for an ISA this CPU lacks.");
  m.def("format_table", &format_table, "The C++ mirror of leankern.formats.FORMATS, as a list of dicts.");
}
