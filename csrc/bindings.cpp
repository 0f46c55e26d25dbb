// The Python module leankern._C: CPU-feature introspection, the ISA switch, the output cache
// controls and the C++ tables the Python side checks itself against.
//
// No op schemas here: each op is declared once, in Python (torch.library), and the kernels
// register on the public ops per dispatch key in their family's files (CPU:
// csrc/<family>/*_cpu.cpp, CUDA: csrc/<family>/*_cuda_binding.cpp). Importing this module loads
// those registrations.
#include <optional>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common/bf16_gemm.h"
#include "common/cpu_features.h"
#include "common/no_derivative.h"
#include "common/output_cache.h"
#include "mx/formats.h"
#include "moe/kernels.h"
#include "sefp/kernels.h"
#include "sefp/packed.h"
#include "mx/kernels.h"
#include "specdec/numerics.h"
#include "specdec/row_kernels.h"

namespace py = pybind11;

namespace {

// The C++ mirror of leankern.mx.formats.FORMATS, for a test that compares the two.
std::vector<py::dict> format_table() {
  using namespace leankern::mx;
  std::vector<py::dict> rows;
  for (const FormatSpec& f : kFormats) {
    const ElemSpec e = elem_spec(f.elem);
    py::dict d;
    d["name"] = f.name;
    d["element"] = kElemNames[f.elem];
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

// {op: {argument: [lo, hi]}}: the limits the C++ argument checks enforce.
py::dict kernel_limits() {
  using namespace leankern::mx;
  auto range = [](const char* arg, int lo, int hi) {
    py::dict d;
    d[arg] = std::vector<int>{lo, hi};
    return d;
  };
  py::dict out;
  out["mx_quantize"] = range("block_size", kMinBlockSize, kMaxBlockSize);
  out["mx_dequantize"] = range("block_size", kMinBlockSize, kMaxBlockSize);
  out["hadamard_transform"] = range("chunk_size", kMinChunkSize, kMaxChunkSize);
  out["mx_linear"] = range("block_size", kMinBlockSize, kMaxBlockSize);
  out["mx_linear_packed"] = range("block_size", kMinBlockSize, kMaxBlockSize);
  return out;
}

py::dict output_cache_stats() {
  const leankern::cpu::OutputCacheStats s = leankern::cpu::output_cache_stats();
  py::dict d;
  d["limit_bytes"] = s.limit_bytes;
  d["cached_bytes"] = s.cached_bytes;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["live_bytes"] = s.live_bytes;
  return d;
}

void output_cache_set_limit(int64_t mb) {
  if (mb < 0) throw py::value_error("output_cache_set_limit: expected mb >= 0, got " + std::to_string(mb));
  leankern::cpu::output_cache_set_limit(static_cast<size_t>(mb) << 20);
}

void def_isa_functions(py::module_& m) {
  namespace cpu = leankern::cpu;
  m.def("cpu_features", &cpu::feature_string,
        "Space-separated CPU features relevant to the kernels (e.g. 'avx2 f16c avx512f ...').");
  m.def(
      "cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
      "ISA the C++ CPU kernels currently dispatch to: 'avx512bf16' | 'avx512' | 'avx2' | 'scalar'.");
  m.def(
      "supported_isas",
      [] {
        std::vector<std::string> out;
        for (auto isa : {cpu::Isa::kAvx512Bf16, cpu::Isa::kAvx512, cpu::Isa::kAvx2, cpu::Isa::kScalar})
          if (cpu::isa_supported(isa)) out.push_back(cpu::isa_name(isa));
        return out;
      },
      "ISAs this CPU can run, best first.");
  m.def("set_cpu_isa", &cpu::set_active_isa, py::arg("name"),
        "Force the C++ CPU kernels onto 'avx512bf16', 'avx512', 'avx2' or 'scalar' ('auto' = best supported). "
        "ValueError for an unknown name, RuntimeError for an ISA this CPU lacks. For tests and benches: never while "
        "another thread is inside a leankern op (a kernel table switched mid-call can crash it).");
  m.def("requested_isa_error", &cpu::requested_isa_error,
        "Why LEANKERN_CPU_ISA was not applied (unknown name, or an ISA this CPU lacks; the best ISA is "
        "active instead), or '' when it was applied or is unset.");
  m.def("amx_supported", &cpu::amx_supported,
        "Whether this CPU has AMX (TILE, BF16, INT8) with the OS's tile state granted to this process.");
  m.def("amx_enabled", &cpu::amx_enabled,
        "Whether kernels with AMX paths take them now: amx_supported(), the 'avx512bf16' ISA active, and "
        "AMX switched on (the default; LEANKERN_AMX=0 at load time or set_amx(False) switch it off).");
  m.def("set_amx", &cpu::set_amx_enabled, py::arg("on"),
        "Switch the AMX paths on or off (comparisons on one CPU); returns the previous setting. Never while another "
        "thread is inside a leankern op.");
}

void def_output_cache_functions(py::module_& m) {
  m.def("output_cache_set_limit", &output_cache_set_limit, py::arg("mb"),
        "Keep up to `mb` MiB of freed >= 1 MiB CPU outputs for reuse (0 = off, the default); lowering "
        "it frees kept buffers down to the new limit.");
  m.def("output_cache_flush", &leankern::cpu::output_cache_flush, "Free every kept buffer (live outputs stay).");
  m.def("output_cache_stats", &output_cache_stats,
        "{'limit_bytes', 'cached_bytes' (freed buffers kept), 'hits', 'misses' (>= 1 MiB allocations while "
        "on), 'live_bytes' (outputs alive that came from the cache's allocator)}.");
}

// The specdec exact weight pass of the active ISA on one row (test hook: the sums the verify ops
// decide with, compared element for element with numerics.exp_weights). row: V elements of dtype
// 0 fp32 / 1 bf16 / 2 fp16 as raw bytes. Returns (S, block sums, every W as raw fp32 bytes or None).
py::tuple specdec_weight_sums(const py::bytes& row, int dtype, int64_t V, float t, float m, int64_t w_min,
                              bool store) {
  using namespace leankern::specdec;
  const char* data = PyBytes_AsString(row.ptr());  // no copy
  const int64_t esz = dtype == 0 ? 4 : 2;
  if (dtype < 0 || dtype > 2 || V < 1 || static_cast<int64_t>(PyBytes_Size(row.ptr())) != V * esz)
    throw py::value_error("specdec_weight_sums: expected dtype in {0, 1, 2} and len(row) == V * itemsize");
  std::vector<int64_t> blocks((V + kBlock - 1) / kBlock);
  std::vector<float> w(store ? V : 0);
  const int64_t S = active_row_kernels().weight_sum(data, dtype, V, t, m, w_min, blocks.data(),
                                                    store ? w.data() : nullptr, nullptr, 0);
  py::object W = py::none();
  if (store) W = py::bytes(reinterpret_cast<const char*>(w.data()), V * sizeof(float));
  return py::make_tuple(S, blocks, W);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "leankern C++ extension: registers the C++ kernels of torch.ops.leankern.* and exposes "
            "CPU-feature dispatch, the output cache and the C++ format / limit tables.";
  def_isa_functions(m);
  def_output_cache_functions(m);
  m.def("register_no_derivative", &leankern::register_no_derivative, py::arg("op"),
        "Give torch.ops.leankern.<op> torch's 'derivative not implemented' autograd kernel (called by "
        "leankern.core.register_op for the ops without a backward).");
  m.def("format_table", &format_table, "The C++ mirror of leankern.mx.formats.FORMATS, as a list of dicts.");
  m.def("moe_exp_f32", [](const py::bytes& x) {
          const std::string in = x;
          if (in.size() % 4) throw py::value_error("moe_exp_f32: x: expected float32 bytes (a multiple of 4), got " +
                                                 std::to_string(in.size()) + " bytes");
          std::string out(in.size(), '\0');
          if (!leankern::moe::exp_f32(reinterpret_cast<const float*>(in.data()), (int64_t)(in.size() / 4),
                                      reinterpret_cast<float*>(&out[0])))
            return py::object(py::none());
          return py::object(py::bytes(out));
        },
        py::arg("x"),
        "Test hook: e^x of float32 bytes by the moe prefill activation's vectorised exp, as float32 bytes; None where "
        "the CPU cannot run the avx512bf16 kernels.");
  m.def("bf16_gemm_nt", [](const py::bytes& x, const py::bytes& w, int64_t N, int64_t K, std::vector<int64_t> rows) {
          // x: R rows of K bf16 bit patterns, w: N rows; out [len(rows), N] fp32 = x[rows] @ w^T (bf16_gemm.h)
          const std::string xs = x, ws = w;
          if (K < 1 || N < 1 || xs.size() % (2 * K) || ws.size() != (size_t)(2 * N * K))
            throw py::value_error("bf16_gemm_nt: x, w: expected bf16 bytes of [R, K] and [N, K] rows, got " +
                                  std::to_string(xs.size()) + " and " + std::to_string(ws.size()) + " bytes");
          const int64_t R = (int64_t)(xs.size() / (2 * K)), M = (int64_t)rows.size();
          for (int64_t r : rows)
            if (r < 0 || r >= R)
              throw py::value_error("bf16_gemm_nt: rows: expected values in [0, " + std::to_string(R) + "), got " +
                                    std::to_string(r));
          std::string out((size_t)(M * N * 4), '\0');
          if (!leankern::cpu::bf16_gemm_nt(reinterpret_cast<const uint16_t*>(xs.data()), K, rows.data(),
                                           reinterpret_cast<const uint16_t*>(ws.data()), K,
                                           reinterpret_cast<float*>(&out[0]), N, M, N, K))
            return py::object(py::none());
          return py::object(py::bytes(out));
        },
        py::arg("x"), py::arg("w"), py::arg("N"), py::arg("K"), py::arg("rows"),
        "Test hook: x[rows] @ w^T (fp32 bytes) by the common bf16 GEMM (AVX512-BF16 dot products or AMX tiles) from "
        "bf16 bit patterns given as bytes; None where the active ISA is not avx512bf16.");
  m.def("moe_set_poison_workspaces", &leankern::moe::set_poison_workspaces, py::arg("on"),
        "Test hook: moe_experts fills its floating-point workspaces and its output with NaN when it allocates them "
        "(a row read before it was written then shows as NaN); LEANKERN_POISON_WORKSPACES=1 at load. Returns the "
        "previous setting.");
  m.def("moe_set_gemv_tokens", &leankern::moe::set_gemv_tokens, py::arg("n"),
        "Tuning hook: moe_experts on CPU runs an expert with at most n kept tokens on the GEMV path (each weight row "
        "streamed once for its tokens), whatever its size; returns the previous n.");
  m.def("sefp_set_decoded_rows", &leankern::sefp::set_decoded_rows, py::arg("rows"), py::arg("packed") = false,
        "Tuning hook: sefp_linear's bf16 GEMV (AVX512-BF16 with GFNI and VBMI; packed=True: sefp_packed_linear's, "
        "AVX512-BF16 with VBMI) decodes 4 weight rows once to bf16 and runs a register tile over every x row from "
        "this many x rows on (below: the weights decoded again for every 4 (8) x rows); default 8 (packed: 16). "
        "Returns the previous value.");
  m.def(
      "sefp_set_packed_avx2_rows",
      [](int64_t gemv_rows, int64_t decode_once_rows) {
        return py::make_tuple(leankern::sefp::set_packed_avx2_gemv_rows(gemv_rows),
                              leankern::sefp::set_packed_avx2_decode_once_rows(decode_once_rows));
      },
      py::arg("gemv_rows") = -1, py::arg("decode_once_rows") = -1,
      "Tuning hook of sefp_packed_linear's AVX2 kernels (sefp_packed_avx2_kernel): up to gemv_rows x rows its GEMV "
      "(0, the default: 64 on the avx2 ISA, 32 on the others), beyond that decoded fp32 panels and torch's GEMM; from "
      "decode_once_rows x rows (default 5) the GEMV decodes each weight once per K slab, below that again for every "
      "4 x rows. A negative value leaves that setting as it is. Returns the previous (gemv_rows, decode_once_rows).");
  m.def("sefp_packed_bf16_kernel", &leankern::sefp::packed_vbmi_supported,
        "Whether sefp_packed_linear has its bf16 kernels here (bf16 x, AVX512-BF16 with VBMI, the avx512bf16 ISA "
        "active); elsewhere its AVX2 kernels (sefp_packed_avx2_kernel) or, on the scalar ISA, a portable decoder.");
  m.def("sefp_packed_avx2_kernel", &leankern::sefp::packed_avx2_supported,
        "Whether sefp_packed_linear has its AVX2 kernels here (AVX2 + FMA, an ISA of avx2 or above active): any x "
        "dtype where the bf16 kernels do not take it; from 2 to 32 x rows faster than sefp_linear on the planes "
        "(leankern.nn.SEFPLinear then serves those from the packed copy), one row 0.76-1.10x (docs/sefp.md).");
  m.def("sefp_set_panel_rows", &leankern::sefp::set_panel_rows, py::arg("rows"), py::arg("packed") = false,
        "Tuning hook: sefp_linear (packed=True: sefp_packed_linear) with bf16 x, no bias, on an AVX512-BF16 CPU with "
        "VBMI (and GFNI for sefp_linear) but no AMX decodes bf16 panels for torch's bf16 GEMM from this many x rows "
        "on (below: the bf16 GEMV); default 80 (packed: 40). Returns the previous value.");
  m.def("sefp_set_panel_rows_f32", &leankern::sefp::set_panel_rows_f32, py::arg("rows"),
        "Tuning hook: sefp_linear with any x its bf16 kernels do not take (every x on CPUs without AVX512-BF16, GFNI "
        "and VBMI) decodes fp32 panels for torch's fp32 GEMM from this many x rows on (below: its fp32 GEMV); 0 (the "
        "default): 65 on the avx2 ISA, 32 on the others; a negative value changes nothing. Returns the previous "
        "setting.");
  m.def("moe_set_tile_min_elems", &leankern::moe::set_tile_min_elems, py::arg("elems"),
        "Tuning hook: moe_experts' CPU GEMV runs an expert's n = 1-4 tokens as a tile of 4 weight rows instead of "
        "one row stream when n x C (C the row length) reaches elems; default 8192 (16 KB of bf16 vectors on "
        "AVX512-BF16, 32 KB of the fp32 loops' vectors). Returns the previous value.");
  m.def("moe_set_stream_prefetch",
        [](int64_t elements, bool into_l2) {
#if defined(__x86_64__) || defined(_M_X64)
          return leankern::moe::set_stream_prefetch(elements, into_l2);
#else
          return int64_t(0);
#endif
        },
        py::arg("elements"), py::arg("into_l2"),
        "Tuning hook: how many bf16 elements ahead moe_experts' avx512bf16 GEMV (experts with 1-4 tokens) prefetches "
        "its weight rows, and whether into L2 rather than L1; returns the previous distance.");
  m.def("moe_set_gemv_input_bytes", &leankern::moe::set_gemv_input_bytes, py::arg("nbytes"),
        "Tuning hook: moe_experts on CPU also runs an expert on the GEMV path while its tokens' fp32 input rows "
        "(n x max(H, I) x 4 bytes) fit nbytes (default 512 KB); returns the previous value.");
  m.def("moe_set_down_split", &leankern::moe::set_down_split, py::arg("on"),
        "moe_experts on the avx512bf16 ISA (AMX or not): the down projection of bf16 w2 carries the fp32 "
        "activation as bf16(a) (False, the default: as a bf16 model holds it; GEMM and GEMV paths) or, True, as "
        "two bf16 parts, hi + lo, 16 significant bits, in the GEMM path (twice its products) and as fp32 in the "
        "GEMV path; returns the previous setting.");
  m.def("bf16_gemm_set_wa_rows", &leankern::cpu::set_bf16_gemm_wa_rows, py::arg("rows"),
        "Test and tuning hook: the bf16 GEMM's AMX path reads w in place as A tiles up to this many rows of x "
        "(default 1024), else packs w into B tiles (the same bits); returns the previous value.");
  m.def("mx_set_vbmi_decoder", [](bool on) { const bool was = leankern::mx::vbmi_decoder_enabled(); leankern::mx::set_vbmi_decoder_enabled(on); return was; },
        py::arg("on"),
        "Test hook: let (True) or forbid (False) the few-rows bf16 mx_linear kernel its AVX512-VBMI "
        "decoders (4-bit, FP8, FP6, MXINT6 weights); returns the previous setting.");
  m.def("mx_set_quantize_vbmi",
        [](bool on) { const bool was = leankern::mx::quantize_vbmi_enabled(); leankern::mx::set_quantize_vbmi_enabled(on); return was; },
        py::arg("on"),
        "Test / A-B hook: let (True) or forbid (False) mx_quantize's AVX512-VBMI code kernels (E2M1: MXFP4 / NVFP4; "
        "E4M3: MXFP8 on bf16 x; block_size >= 16; 32 elements per op, vpermb tables; else the generic AVX-512 ones, "
        "bit-identical); returns the previous setting.");
  m.def("mx_set_int8_few_rows",
        [](std::optional<bool> on) -> py::object {
          const int was = leankern::mx::set_int8_few_rows(on.has_value() ? (*on ? 1 : 0) : -1);
          return was < 0 ? py::object(py::none()) : py::object(py::bool_(was == 1));
        },
        py::arg("on"),
        "Let (True) or forbid (False) dual INT x INT mx_linear below 5 rows of x (below 4 where AMX is on) the "
        "int8 kernel's few-rows form (vpdpbusd; AVX512-VNNI and VBMI), or None: the CPU's default (8-bit weights "
        "everywhere, 4-bit weights on CPUs with AMX); returns the previous setting (None for the default).");
  m.def("mx_set_few_rows_fma", [](bool on) { const bool was = leankern::mx::few_rows_fma_enabled(); leankern::mx::set_few_rows_fma_enabled(on); return was; },
        py::arg("on"),
        "Let (True) or forbid (False) the few-rows mx_linear kernel its fp32-FMA form (4-bit and 6 / 8-bit "
        "weights, below the prefill rows; default: on where the CPU has AMX, whose vdpbf16ps is the slower product, "
        "or as LEANKERN_MX_FMA=0 / 1 says); returns the previous setting.");
  m.def("specdec_weight_sums", &specdec_weight_sums, py::arg("row"), py::arg("dtype"), py::arg("V"), py::arg("t"),
        py::arg("m"), py::arg("w_min"), py::arg("store"),
        "Test hook: the specdec exact weight pass of the active ISA on one row given as raw bytes: (S, block "
        "sums, W or None).");
  m.def("kernel_limits", &kernel_limits,
        "{op: {argument: [lo, hi]}}: the size limits the C++ kernels' argument checks enforce.");
}
