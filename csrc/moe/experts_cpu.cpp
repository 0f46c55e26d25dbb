// CPU kernel of leankern::moe_experts (schema and numerics: python/leankern/moe/ops.py, ref.experts_ref).
//
// 1. Checks (checks.h), then the ids' values (range, duplicates) before any weight is read.
// 2. Per-expert lists of kept slots (histogram + prefix sum, ascending slots): only experts with a kept slot get
//    work; the others' weights are never touched.
// 3. Decode experts (few kept tokens: use_gemv) and the shared expert when T is that small: GEMV
//    (kernels.h) over one flat list of row blocks of every touched projection, handed out to both cores:
//    w13 rows (gate/up), then the activation, then w2 rows. Each weight row is streamed once for all of its
//    expert's tokens; T = 1 with k = 8 splits evenly over the threads.
// 4. Prefill experts (more tokens): the expert's token rows gathered, two fp32 GEMMs (at::mm on the expert's
//    weight slice, a view; bf16 / fp16 weights converted panel by panel into an fp32 buffer first, because
//    torch's bf16 GEMM on a CPU without AVX512-BF16 runs ~7x slower than its fp32 GEMM), activation in between,
//    except that on an avx512bf16 CPU the gate/up GEMM of bf16 hidden states and bf16 weights runs as bf16 dot
//    products with fp32 sums (common/bf16_gemm.h: the same exact products; torch's bf16 mm would round its output),
//    and the down GEMM of bf16 w2 (any hidden dtype) takes the activation as bf16(a) (down_parts; or as two bf16
//    parts, split_bf16: 16 significant bits; activation + conversion before it and the sums, bias, weight and
//    accumulation after it one vectorised pass each: kernels.h act_split_bf16 / combine_split), and (y + b2) * w
//    added to an fp32 [T, H]
//    accumulator, experts in ascending order (deterministic). With AMX (bf16 hidden and weights, H and I multiples
//    of 32; common/bf16_gemm.h): experts of 2+ tokens take this path; the down GEMM adds hi + lo, bias and weight
//    into the accumulator from its finished tiles (bf16_gemm_nt_pairs); and experts of 2..kSmallTokens tokens run
//    whole on one thread each (small_expert), their hi + lo sums rows of the decode pairs' output.
// 5. Combine per token: prefill accumulator, then the decode (and one-thread AMX) slots in slot order, then
//    gate * shared output.
//    Everything is fp32 until the final cast to hidden's dtype, except the activation of the avx512bf16 prefill
//    down GEMM above, rounded to bf16 (the weight dtype; or carried with 16 of its 24 bits where
//    moe_set_down_split asks).
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

#include "common/bf16_gemm.h"
#include "common/cpu_features.h"
#include "common/parallel.h"
#include "moe/checks.h"
#include "moe/kernels.h"
#include "moe/vec.h"

namespace leankern {
namespace moe {
namespace {

// GEMV path for an expert with n kept tokens when n <= kDecodeMinTokens or its n fp32 input rows fit in
// kDecodeInputBytes (half of a Zen 2 L2: the tile kernel re-reads them for every row quad). Measured on Zen 2
// (H = 2048, I = 768, bf16): the GEMV path is 2.5x faster than convert + fp32 GEMM at n = 16, equal at n = 64.
std::atomic<int64_t> g_decode_min_tokens{8};  // kDecodeMinTokens; moe_set_gemv_tokens (a tuning hook)
std::atomic<int64_t> g_decode_input_bytes{512 << 10};  // kDecodeInputBytes; moe_set_gemv_input_bytes
// kernels.h tile_min_elems (the GEMV's stream-or-tile rule for 1-4 tokens); moe_set_tile_min_elems
std::atomic<int64_t> g_tile_min_elems{8192};
inline bool use_gemv(int64_t n, int64_t C) {
  return n <= g_decode_min_tokens.load(std::memory_order_relaxed) ||
         n * C * 4 <= g_decode_input_bytes.load(std::memory_order_relaxed);
}
constexpr int64_t kRowBlock = 64;         // rows of a projection per task (a multiple of every ISA's column strip)
constexpr int64_t kPanelBytes = 16 << 20;  // fp32 panel of converted weights in the prefill path

int dtype_code(at::ScalarType st) { return st == at::kFloat ? kF32 : st == at::kBFloat16 ? kBF16 : kF16; }

std::atomic<bool> g_poison{[] {
  const char* v = std::getenv("LEANKERN_POISON_WORKSPACES");
  return v != nullptr && v[0] == '1';
}()};

// at::empty, filled with NaN when the poison hook is on (set_poison_workspaces): raw stores, no ATen op (the
// scratch grows on worker threads, where an in-place op would not see the caller's inference mode).
at::Tensor ws_empty(at::IntArrayRef size, const at::TensorOptions& o) {
  at::Tensor t = at::empty(size, o);
  if (g_poison.load(std::memory_order_relaxed)) {
    const int64_t n = t.numel();
    if (t.scalar_type() == at::kFloat) std::fill_n(t.data_ptr<float>(), n, NAN);
    else if (t.scalar_type() == at::kBFloat16) std::fill_n(static_cast<uint16_t*>(t.data_ptr()), n, uint16_t(0x7FC0));
    else if (t.scalar_type() == at::kHalf) std::fill_n(static_cast<uint16_t*>(t.data_ptr()), n, uint16_t(0x7E00));
  }
  return t;
}

inline float load_any(const void* p, int dt, int64_t i) {
  return dt == kF32 ? load1<kF32>(p, i) : dt == kBF16 ? load1<kBF16>(p, i) : load1<kF16>(p, i);
}

// A weight matrix W [R, C]: rows contiguous (W(r, c) = p[r * ld + c]) or columns contiguous (p[c * ld + r]).
struct Mat {
  const void* p;
  int dt;
  int64_t ld;
  bool cols;
  int64_t R, C;
};

// 2D view -> Mat (false when neither rows nor columns are contiguous).
bool mat_of(const at::Tensor& w, Mat& m) {
  const int64_t R = w.size(0), C = w.size(1);
  m = Mat{w.data_ptr(), dtype_code(w.scalar_type()), 0, false, R, C};
  if (C == 1 || w.stride(1) == 1) {
    m.ld = w.stride(0);
  } else if (R == 1 || w.stride(0) == 1) {
    m.cols = true;
    m.ld = w.stride(1);
  } else {
    return false;
  }
  return true;
}

struct Job {
  Mat m;
  int64_t n;              // vectors
  const float* const* xs;  // [n] input rows (C floats each)
  float* const* outs;      // [n] output rows (R floats each)
  const uint16_t* const* xb = nullptr;  // the rows as bf16: bf16 hidden (gate/up), or bf16(a) (down, decode_all)
};

void run_jobs(const MoeKernels& K, const std::vector<Job>& jobs) {
  std::vector<std::pair<int32_t, int64_t>> blocks;  // (job, first row)
  for (size_t j = 0; j < jobs.size(); ++j)
    for (int64_t r = 0; r < jobs[j].m.R; r += kRowBlock) blocks.emplace_back((int32_t)j, r);
  // contiguous runs of blocks per thread (cpu::streaming_chunk): measured 1.02-1.05x at T = 1..16, Qwen3-30B-A3B
  // layer, cold, 2-core Xeon
  const int64_t nblk = (int64_t)blocks.size();
  cpu::parallel_chunks(nblk, cpu::streaming_chunk(nblk, 1), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const Job& jb = jobs[blocks[b].first];
      const int64_t r0 = blocks[b].second, r1 = std::min(jb.m.R, r0 + kRowBlock);
      if (jb.xb && K.gemv_rows_bf16 && !jb.m.cols && jb.m.dt == kBF16)  // bf16 x bf16: dot products (avx512bf16)
        K.gemv_rows_bf16(static_cast<const uint16_t*>(jb.m.p), jb.m.ld, r0, r1, jb.m.C, jb.xb, jb.n, jb.outs);
      else
        (jb.m.cols ? K.gemv_cols : K.gemv_rows)(jb.m.p, jb.m.dt, jb.m.ld, r0, r1, jb.m.C, jb.xs, jb.n, jb.outs);
    }
  });
}

using Act = ActParams;  // kernels.h

// a[i] = act(gate_i + b_gate, up_i + b_up), i < I, from gu [2I] (ref.activation_ref, fp32).
void activate_row(const Act& ac, const float* gu, const void* bias, int bdt, int64_t I, float* a) {
  for (int64_t i = 0; i < I; ++i) {
    const int64_t gi = ac.interleaved ? 2 * i : i, ui = ac.interleaved ? 2 * i + 1 : I + i;
    float g = gu[gi], u = gu[ui];
    if (bias != nullptr) {
      g = g + load_any(bias, bdt, gi);
      u = u + load_any(bias, bdt, ui);
    }
    if (!ac.oai) {
      a[i] = g / (1.0f + std::exp(-g)) * u;
    } else {
      g = g > ac.limit ? ac.limit : g;  // clamp(max=limit); NaN stays NaN
      u = u < -ac.limit ? -ac.limit : (u > ac.limit ? ac.limit : u);
      const float z = g * ac.alpha;
      a[i] = g * (1.0f / (1.0f + std::exp(-z))) * (u + 1.0f);
    }
  }
}

// out [n, R] = X [n, C] @ W^T with W [R, C] a (strided) view in any float dtype: at::mm in fp32, converting
// half-precision weights panel by panel into buf (fp32).
void project(const at::Tensor& X, const at::Tensor& W, at::Tensor out, at::Tensor& buf) {
  if (W.scalar_type() == at::kFloat) {
    at::mm_out(out, X, W.t());
    return;
  }
  const int64_t R = W.size(0), C = W.size(1);
  const int64_t prow = std::min(R, std::max<int64_t>(64, kPanelBytes / (4 * C) / 64 * 64));
  if (!buf.defined() || buf.numel() < prow * C) buf = ws_empty({prow * C}, X.options());
  const bool rows = C == 1 || W.stride(1) == 1;
  for (int64_t r0 = 0; r0 < R; r0 += prow) {
    const int64_t nr = std::min(prow, R - r0);
    const at::Tensor Wp = W.narrow(0, r0, nr);
    at::Tensor rhs;
    if (rows) {
      at::Tensor bv = buf.narrow(0, 0, nr * C).view({nr, C});
      bv.copy_(Wp);
      rhs = bv.t();
    } else {  // transposed view: keep its memory order (a row-wise copy), the GEMM reads the transpose
      rhs = buf.narrow(0, 0, nr * C).view({C, nr});
      rhs.copy_(Wp.t());
    }
    at::Tensor dst = out.narrow(1, r0, nr);  // strided (ld = out.stride(0)): BLAS writes it in place
    at::mm_out(dst, X, rhs);
  }
}

// out [n, R] = hidden rows `rows` (all T when nullptr) @ W^T, read in place from xb16 (bf16 hidden [T, C]), for W bf16
// with contiguous rows: bf16 dot products with fp32 sums on an avx512bf16 CPU (common/bf16_gemm.h); false (nothing
// done) where that does not apply.
bool project_bf16(const uint16_t* xb16, const int64_t* rows, int64_t n, const at::Tensor& W, at::Tensor out) {
  if (!xb16 || W.scalar_type() != at::kBFloat16 || W.stride(1) != 1 || out.stride(1) != 1) return false;
  return cpu::bf16_gemm_nt(xb16, W.size(1), rows, reinterpret_cast<const uint16_t*>(W.data_ptr<at::BFloat16>()),
                           W.stride(0), out.data_ptr<float>(), out.stride(0), n, W.size(0), W.size(1));
}

// The parts of the activation the avx512bf16 down GEMM of bf16 w2 carries (moe_set_down_split): 1, bf16(a) (the
// default: a bf16 model holds its activations so, and the tolerance of ops.py's bound includes that rounding), or 2,
// hi + lo (16 significant bits, twice the down GEMM's products). Why 1: Qwen3-30B-A3B experts on the 2-core Xeon
// with AMX, one process, alternating: T = 4096 1.13x, T = 256 1.09x, T = 4096 at 0.88 skip 1.05x faster.
std::atomic<int> g_down_parts{1};
int down_parts() { return g_down_parts.load(std::memory_order_relaxed); }

// v as hi + lo, two bf16 values: hi = bf16(v) (RNE; truncated where RNE would take a finite v to Inf), lo =
// bf16(v - hi) (v - hi is exact), 0 where v is +-Inf (not Inf - Inf = NaN): hi + lo is v to 16 significant bits.
inline void split_bf16(float v, c10::BFloat16* hi, c10::BFloat16* lo) {
  c10::BFloat16 h(v);
  if (std::isinf(static_cast<float>(h)) && std::isfinite(v))
    h = c10::BFloat16(static_cast<uint16_t>(f2u(v) >> 16), c10::BFloat16::from_bits());
  *hi = h;
  *lo = std::isinf(v) ? c10::BFloat16(0.0f) : c10::BFloat16(v - static_cast<float>(h));
}

bool split_down_takes(const at::Tensor& W) {  // the weight side of project_split_bf16's conditions
  return W.scalar_type() == at::kBFloat16 && W.stride(1) == 1 && cpu::active_isa() == cpu::Isa::kAvx512Bf16;
}

// out [n, R] = a [n, C] (fp32) @ W^T for W bf16 with contiguous rows, on an avx512bf16 CPU: a is carried as
// down_parts() bf16 parts, hi = bf16(a) and (two parts) lo = bf16(a - hi) (a - hi is exact in fp32, so a - hi - lo
// is within 2^-16 |a|), through the bf16 GEMM as rows of one call (each w tile packed once for both); out = the
// hi rows' sums (+ the lo rows': one fp32 rounding). Every product is exact. Why: the fp32 GEMM needs the weights
// widened to fp32 panels and runs at half the products per instruction; even two bf16 dot products per pair
// beat it on Zen 4 (Mixtral-8x7B experts, T = 256: measured in docs/moe.md). False (nothing done) elsewhere.
bool project_split_bf16(const at::Tensor& a, const at::Tensor& W, at::Tensor out) {
  if (!split_down_takes(W) || !a.is_contiguous() || out.stride(1) != 1) return false;
  const int64_t n = a.size(0), C = a.size(1), R = W.size(0), np = down_parts();
  at::Tensor parts = ws_empty({np * n, C}, a.options().dtype(at::kBFloat16));  // hi rows, then lo rows
  at::Tensor sums = ws_empty({np * n, R}, a.options());
  const float* ap = a.data_ptr<float>();
  c10::BFloat16* pp = parts.data_ptr<c10::BFloat16>();
  cpu::parallel_chunks(n, 8, [&](int64_t i0, int64_t i1) {
    c10::BFloat16 lo;
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t c = 0; c < C; ++c) {
        split_bf16(ap[i * C + c], pp + i * C + c, np == 2 ? pp + (n + i) * C + c : &lo);
      }
  });
  if (!cpu::bf16_gemm_nt(reinterpret_cast<const uint16_t*>(pp), C, nullptr,
                         reinterpret_cast<const uint16_t*>(W.data_ptr<at::BFloat16>()), W.stride(0),
                         sums.data_ptr<float>(), R, np * n, R, C))
    return false;
  if (np == 2) at::add_out(out, sums.narrow(0, 0, n), sums.narrow(0, n, n));
  else out.copy_(sums);
  return true;
}

struct Problem {
  int64_t T, H, E, I, k, Is;
  const float* x = nullptr;  // [T, H] fp32: HiddenF32 sets it on first use
  const uint16_t* xb16;  // [T, H] hidden's bf16 bits where hidden is bf16 (gate/up may take bf16 dot products), else nullptr
  const int32_t* ids;
  const float* tw;   // [T, k]
  at::Tensor w13, w2;  // [E, 2I, H], [E, H, I]
  const void* b13;
  int b13dt;
  int64_t b13_ld;
  const void* b2;
  int b2dt;
  int64_t b2_ld;
  Act act;
  bool shared;
  at::Tensor sw1, sw3, sw2;  // rows or columns contiguous
  std::vector<float> sgate;  // [T] sigmoid(x . shared_gate), or empty (no gate)
};

at::Tensor expert_view(const at::Tensor& w, int64_t e) { return w.select(0, e); }

// hidden as fp32 [T, H], made on first use (by the calling thread, before any parallel region reads P.x): the bf16
// paths read bf16 hidden in place, and the copy is 32 MB at Qwen3's T = 4096 (~8 ms on the 2-core Xeon, a tenth of
// the call at 0.88 skip).
struct HiddenF32 {
  const at::Tensor& hidden;
  Problem& P;
  at::Tensor t;
  const at::Tensor& operator()() {
    if (!t.defined()) {
      t = hidden.to(at::kFloat).contiguous();
      P.x = t.data_ptr<float>();
    }
    return t;
  }
};

const at::TensorOptions kF32Opts = at::TensorOptions().dtype(at::kFloat);

// A bias row (any float dtype) as fp32, or an undefined tensor.
at::Tensor bias_f32(const void* b, int dt, int64_t ld, int64_t e, int64_t len) {
  if (!b) return at::Tensor();
  at::Tensor out = ws_empty({len}, at::TensorOptions().dtype(at::kFloat));
  const void* row = (const char*)b + e * ld * (dt == kF32 ? 4 : 2);
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < len; ++i) o[i] = load_any(row, dt, i);
  return out;
}

// Scratch of the prefill experts, reused from one expert to the next (fresh large buffers per expert cost page
// faults and page clearing): grown on demand, never shrunk within a call.
struct Scratch {
  at::Tensor gu, parts, sums;  // fp32 gate/up sums, the activation's bf16 parts, fp32 down sums
  static void* grow(at::Tensor& t, int64_t n, at::ScalarType dt) {
    if (!t.defined() || t.numel() < n) t = ws_empty({n}, at::TensorOptions().dtype(dt));
    return t.data_ptr();
  }
};

// Whether expert e's down GEMM takes bf16 dot products with the activation as two bf16 parts, the element-wise
// steps by the kernels' act_split_bf16 / combine_split.
bool split_epilogue(const Problem& P, int64_t e) {
  return active_kernels().combine_split != nullptr && split_down_takes(expert_view(P.w2, e));
}

// Whether the split down GEMM fuses its combine (cpu::bf16_gemm_nt_pairs: AMX, I % 32 == 0).
bool pairs_take(const Problem& P) { return cpu::amx_enabled() && P.I % 32 == 0; }

// act + split of the gate/up sums gu [n, 2I] (+ bias b13 or nullptr) into bf16_gemm_nt_pairs' layout with np parts:
// for each 16-token group g in [g0, g1), 16 hi rows then (np = 2) 16 lo rows of I bf16 (rows of tokens past n zero).
void act_split_pairs(const Act& act, int64_t I, const float* gu, int64_t n, const float* b13, uint16_t* parts,
                     int64_t g0, int64_t g1, int np) {
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t rows = std::min<int64_t>(16, n - g * 16);
    uint16_t* hi = parts + g * 16 * np * I;
    uint16_t* lo = np == 2 ? hi + 16 * I : nullptr;
    active_kernels().act_split_bf16(gu + g * 16 * 2 * I, rows, I, act, b13, hi, lo);
    std::fill(hi + rows * I, hi + 16 * I, (uint16_t)0);
    if (lo) std::fill(lo + rows * I, lo + 16 * I, (uint16_t)0);
  }
}

// prefill_expert's avx512bf16 path from the gate/up sums gu [n, 2I]: act + split (one pass), the down GEMM on the
// 2n bf16 rows, hi + lo sums, bias, routing weight and accumulation (one pass; with AMX inside the GEMM). False:
// nothing done.
bool prefill_down_split(const Problem& P, int64_t e, const int64_t* slots, const int64_t* ip, int64_t n,
                        const float* gu, float* acc, Scratch& sc) {
  const MoeKernels& K = active_kernels();
  const at::Tensor w2 = expert_view(P.w2, e);
  const int64_t I = P.I, H = P.H;
  const at::Tensor b13 = bias_f32(P.b13, P.b13dt, P.b13_ld, e, 2 * I), b2 = bias_f32(P.b2, P.b2dt, P.b2_ld, e, H);
  const float* b13p = b13.defined() ? b13.data_ptr<float>() : nullptr;
  const float* b2p = b2.defined() ? b2.data_ptr<float>() : nullptr;
  std::vector<float> tw(n);
  for (int64_t i = 0; i < n; ++i) tw[i] = P.tw[slots[i]];
  const uint16_t* w2p = reinterpret_cast<const uint16_t*>(w2.data_ptr<at::BFloat16>());
  const int np = down_parts();
  if (pairs_take(P)) {  // the combine fused into the GEMM
    uint16_t* parts = static_cast<uint16_t*>(Scratch::grow(sc.parts, cpu::pair_rows(n, np) * I, at::kBFloat16));
    cpu::parallel_chunks((n + 15) / 16, 1, [&](int64_t g0, int64_t g1) {
      act_split_pairs(P.act, I, gu, n, b13p, parts, g0, g1, np);
    });
    return cpu::bf16_gemm_nt_pairs(parts, I, w2p, w2.stride(0), cpu::PairCombine{n, ip, tw.data(), b2p, acc, H, np},
                                   H, I);
  }
  uint16_t* parts = static_cast<uint16_t*>(Scratch::grow(sc.parts, np * n * I, at::kBFloat16));  // hi rows, lo rows
  cpu::parallel_chunks(n, 8, [&](int64_t i0, int64_t i1) {
    K.act_split_bf16(gu + i0 * 2 * I, i1 - i0, I, P.act, b13p, parts + i0 * I, np == 2 ? parts + (n + i0) * I : nullptr);
  });
  float* sums = static_cast<float*>(Scratch::grow(sc.sums, np * n * H, at::kFloat));
  if (!cpu::bf16_gemm_nt(parts, I, nullptr, w2p, w2.stride(0), sums, H, np * n, H, I)) return false;
  cpu::parallel_chunks(n, 8, [&](int64_t t0, int64_t t1) {  // tokens of one expert are distinct: no race
    K.combine_split(sums, np == 2 ? sums + n * H : nullptr, H, b2p, ip, tw.data(), t0, t1, acc);
  });
  return true;
}

// Prefill experts of kAmxGemvMaxTokens + 1 .. kSmallTokens kept tokens whose GEMMs both take AMX tiles and whose
// down GEMM the split epilogue (small_takes): one expert per task, each whole on one thread (the GEMMs' and the
// activation's own parallel loops then run inline on it), its y = hi + lo down sums written as rows of the decode
// pairs' y, to which the final combine adds bias and routing weight as for the decode pairs. Why: one expert of
// ~16 tokens is ~0.6 ms of weight reads cut into two GEMMs and two element-wise passes, each split over the threads
// and joined; their joins and uneven ends had both cores idle about a quarter of the call (Qwen3-30B-A3B, T = 256,
// 2-core Xeon, measured in docs/moe.md). Up to 64 tokens, not 32: Qwen3 T = 4096 at 0.88 skip (15-44 tokens per
// expert) 100 -> 78-92 ms, T = 1024 (~64) 100-104 -> 92-96 ms; 96 or 128 were slower at T = 1024.
constexpr int64_t kSmallTokens = 64;
// Fewer small experts than this per thread: each expert's GEMMs split over the threads instead. 3, not 4: Mixtral's
// 8 experts at T = 16 (~4 tokens each, 7-8 of them touched) qualify; from DRAM, alternating runs, 109-112 -> 93-96 ms
// at no skip, 0.5 skip unchanged (84-88 vs 87-88 ms); 2 was no better
constexpr int64_t kSmallMinExpertsPerThread = 3;
// The GEMV path's limit where an expert's GEMMs take AMX tiles: from 2 tokens on, the one-thread AMX expert above
// was faster (Qwen3-30B-A3B on the 2-core Xeon, T = 64, ~4 tokens per expert: 0.86x the time with the GEMV up to 8).
constexpr int64_t kAmxGemvMaxTokens = 1;

bool small_takes(const Problem& P, int64_t e) {
  return P.xb16 && pairs_take(P) && split_epilogue(P, e) && expert_view(P.w13, e).stride(1) == 1;
}

// y [n, H] = the down sums (hi + lo) of expert e's n tokens (slots `slots`), all on the calling thread.
void small_expert(const Problem& P, int64_t e, const int64_t* slots, int64_t n, float* y, Scratch& sc) {
  const at::Tensor w13 = expert_view(P.w13, e), w2 = expert_view(P.w2, e);
  const int64_t I = P.I, H = P.H;
  std::vector<int64_t> ip(n);
  for (int64_t i = 0; i < n; ++i) ip[i] = slots[i] / P.k;
  float* gu = static_cast<float*>(Scratch::grow(sc.gu, n * 2 * I, at::kFloat));
  cpu::bf16_gemm_nt(P.xb16, H, ip.data(), reinterpret_cast<const uint16_t*>(w13.data_ptr<at::BFloat16>()),
                    w13.stride(0), gu, 2 * I, n, 2 * I, H);
  const at::Tensor b13 = bias_f32(P.b13, P.b13dt, P.b13_ld, e, 2 * I);
  const int np = down_parts();
  uint16_t* parts = static_cast<uint16_t*>(Scratch::grow(sc.parts, cpu::pair_rows(n, np) * I, at::kBFloat16));
  act_split_pairs(P.act, I, gu, n, b13.defined() ? b13.data_ptr<float>() : nullptr, parts, 0, (n + 15) / 16, np);
  cpu::bf16_gemm_nt_pairs(parts, I, reinterpret_cast<const uint16_t*>(w2.data_ptr<at::BFloat16>()), w2.stride(0),
                          cpu::PairCombine{n, nullptr, nullptr, nullptr, y, H, np}, H, I);
}

// Prefill expert e: tokens of its pairs (slots `slots`), accumulated into acc [T, H].
void prefill_expert(const Problem& P, int64_t e, const int64_t* slots, int64_t n, float* acc, at::Tensor& buf,
                    HiddenF32& xf, Scratch& sc) {
  const at::TensorOptions opts = kF32Opts;
  at::Tensor idx = at::empty({n}, opts.dtype(at::kLong));
  int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) ip[i] = slots[i] / P.k;
  const bool split = split_epilogue(P, e);
  at::Tensor gu = split ? at::from_blob(Scratch::grow(sc.gu, n * 2 * P.I, at::kFloat), {n, 2 * P.I}, opts)
                        : ws_empty({n, 2 * P.I}, opts);
  // the token rows are gathered (fp32) only for the fp32 GEMM; the bf16 one reads them in place
  if (!project_bf16(P.xb16, ip, n, expert_view(P.w13, e), gu))
    project(xf().index_select(0, idx), expert_view(P.w13, e), gu, buf);
  if (split && prefill_down_split(P, e, slots, ip, n, gu.data_ptr<float>(), acc, sc)) return;
  at::Tensor a = ws_empty({n, P.I}, opts), y = ws_empty({n, P.H}, opts);
  const float* gp = gu.data_ptr<float>();
  float* apt = a.data_ptr<float>();
  const void* b13 = P.b13 ? (const char*)P.b13 + e * P.b13_ld * (P.b13dt == kF32 ? 4 : 2) : nullptr;
  cpu::parallel_chunks(n, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) activate_row(P.act, gp + i * 2 * P.I, b13, P.b13dt, P.I, apt + i * P.I);
  });
  if (!project_split_bf16(a, expert_view(P.w2, e), y)) project(a, expert_view(P.w2, e), y, buf);
  const float* yp = y.data_ptr<float>();
  const void* b2 = P.b2 ? (const char*)P.b2 + e * P.b2_ld * (P.b2dt == kF32 ? 4 : 2) : nullptr;
  cpu::parallel_chunks(n, 8, [&](int64_t i0, int64_t i1) {  // tokens of one expert are distinct: no race
    for (int64_t i = i0; i < i1; ++i) {
      const float w = P.tw[slots[i]];
      float* o = acc + ip[i] * P.H;
      const float* yr = yp + i * P.H;
      if (b2 != nullptr) {
        for (int64_t h = 0; h < P.H; ++h) o[h] += (yr[h] + load_any(b2, P.b2dt, h)) * w;
      } else {
        for (int64_t h = 0; h < P.H; ++h) o[h] += yr[h] * w;
      }
    }
  });
}

// Shared expert over all T tokens with at::mm: ys [T, H].
void shared_prefill(const Problem& P, HiddenF32& xf, at::Tensor& buf, float* ys) {
  const at::TensorOptions opts = kF32Opts;
  at::Tensor gu = ws_empty({P.T, 2 * P.Is}, opts);
  if (!project_bf16(P.xb16, nullptr, P.T, P.sw1, gu.narrow(1, 0, P.Is))) project(xf(), P.sw1, gu.narrow(1, 0, P.Is), buf);
  if (!project_bf16(P.xb16, nullptr, P.T, P.sw3, gu.narrow(1, P.Is, P.Is)))
    project(xf(), P.sw3, gu.narrow(1, P.Is, P.Is), buf);
  const Act silu{false, false, 0.f, 0.f};
  const float* gp = gu.data_ptr<float>();
  if (cpu::amx_enabled() && P.Is % 32 == 0 && split_down_takes(P.sw2)) {  // the routed experts' AMX down GEMM
    const int np = down_parts();
    at::Tensor parts = ws_empty({cpu::pair_rows(P.T, np) * P.Is}, opts.dtype(at::kBFloat16));
    uint16_t* pp = reinterpret_cast<uint16_t*>(parts.data_ptr<at::BFloat16>());
    cpu::parallel_chunks((P.T + 15) / 16, 1, [&](int64_t g0, int64_t g1) {
      act_split_pairs(silu, P.Is, gp, P.T, nullptr, pp, g0, g1, np);
    });
    if (cpu::bf16_gemm_nt_pairs(pp, P.Is, reinterpret_cast<const uint16_t*>(P.sw2.data_ptr<at::BFloat16>()),
                                P.sw2.stride(0), cpu::PairCombine{P.T, nullptr, nullptr, nullptr, ys, P.H, np}, P.H,
                                P.Is))
      return;
  }
  at::Tensor yv = at::from_blob(ys, {P.T, P.H}, opts);
  const MoeKernels& K = active_kernels();
  if (K.act_split_bf16 && split_down_takes(P.sw2)) {  // the routed experts' split epilogue (prefill_down_split)
    // Why: the fp32 activation, a scalar split into bf16 parts and the down sums copied into ys were three more
    // passes over [T, Is] / [T, H] in fresh pages (DeepSeek-V2-Lite's shared experts at T = 4096: 46 + 23 + 32 MB)
    const int np = down_parts();
    at::Tensor parts = ws_empty({np * P.T * P.Is}, opts.dtype(at::kBFloat16));  // hi rows, then lo rows
    uint16_t* pp = reinterpret_cast<uint16_t*>(parts.data_ptr<at::BFloat16>());
    cpu::parallel_chunks(P.T, 8, [&](int64_t i0, int64_t i1) {
      K.act_split_bf16(gp + i0 * 2 * P.Is, i1 - i0, P.Is, silu, nullptr, pp + i0 * P.Is,
                       np == 2 ? pp + (P.T + i0) * P.Is : nullptr);
    });
    const uint16_t* w2p = reinterpret_cast<const uint16_t*>(P.sw2.data_ptr<at::BFloat16>());
    if (np == 1) {  // the sums are ys: written in place
      if (cpu::bf16_gemm_nt(pp, P.Is, nullptr, w2p, P.sw2.stride(0), ys, P.H, P.T, P.H, P.Is)) return;
    } else {
      at::Tensor sums = ws_empty({2 * P.T, P.H}, opts);
      if (cpu::bf16_gemm_nt(pp, P.Is, nullptr, w2p, P.sw2.stride(0), sums.data_ptr<float>(), P.H, 2 * P.T, P.H,
                            P.Is)) {
        at::add_out(yv, sums.narrow(0, 0, P.T), sums.narrow(0, P.T, P.T));
        return;
      }
    }
  }
  at::Tensor a = ws_empty({P.T, P.Is}, opts);
  float* apt = a.data_ptr<float>();
  cpu::parallel_chunks(P.T, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) activate_row(silu, gp + i * 2 * P.Is, nullptr, 0, P.Is, apt + i * P.Is);
  });
  if (!project_split_bf16(a, P.sw2, yv)) project(a, P.sw2, yv, buf);
}

Mat expert_mat(const at::Tensor& w, int64_t e) {
  Mat m;
  mat_of(w.select(0, e), m);  // checked: rows or columns contiguous
  return m;
}

// A buffer whose every element is written before it is read, left uninitialised: std::vector would zero it, and
// would fault in the pages of the fp32 activation rows that no row uses where w2 takes bf16(a).
template <class T>
struct Uninit {
  std::unique_ptr<T[]> p;
  explicit Uninit(size_t n) : p(new T[n]) {}
  T* data() { return p.get(); }
};

// GEMV path: decode experts `dec` (expert ids) with their slot lists, and the shared expert if `with_shared`.
// Writes y [pair rows, H] in the order of dec's pairs and ys [T, H].
void decode_all(const Problem& P, const std::vector<int64_t>& dec, const std::vector<int64_t>& offs,
                const std::vector<int64_t>& slots, bool with_shared, float* y, float* ys) {
  const int64_t I = P.I, H = P.H, T = P.T, Is = P.Is;
  int64_t npairs = 0;
  for (int64_t e : dec) npairs += offs[e + 1] - offs[e];
  const int64_t ns = with_shared ? T : 0;
  const MoeKernels& K = active_kernels();
  // the down GEMV of bf16 w2 (rows contiguous) on an avx512bf16 CPU takes bf16(a), as the prefill down GEMM does
  // (down_parts() == 1; with the split asked for, a stays fp32: closer than hi + lo). Why: bf16 dot products, 32
  // products per instruction, against widening every weight to fp32 for 16 per FMA; and the activation is then one
  // vectorised pass (act_split_bf16) instead of a scalar exp per element. Qwen3-30B-A3B experts (~16 tokens each
  // at T = 256, all on this path on a CPU without AMX) on 2-core Zen 4: measured in docs/moe.md.
  const bool down_bf16 = K.gemv_rows_bf16 && K.act_split_bf16 && down_parts() == 1;
  auto takes_bf16 = [&](const Mat& m) { return down_bf16 && !m.cols && m.dt == kBF16; };
  Uninit<float> gu(npairs * 2 * I + ns * 2 * Is), a(npairs * I + ns * Is);  // a: the rows kept in fp32
  Uninit<uint16_t> ab(down_bf16 ? npairs * I + ns * Is : 0);  // a's rows as bf16 where their w2 takes them
  std::vector<const float*> xs1(npairs + 2 * ns), xs2(npairs + ns);
  std::vector<const uint16_t*> xb1(P.xb16 ? npairs + 2 * ns : 0);  // xs1's rows as bf16 (bf16 hidden)
  std::vector<const uint16_t*> xb2(down_bf16 ? npairs + ns : 0);
  // whether the routed experts' / the shared expert's activation rows go out as bf16 (ab) rather than fp32 (a): every
  // expert's w2 is a slice of the same tensor, so one answer serves them all
  const bool routed_b16 = !dec.empty() && takes_bf16(expert_mat(P.w2, dec[0]));
  bool shared_b16 = false;
  std::vector<float*> o1(npairs + 2 * ns), o2(npairs + ns);
  std::vector<Job> jobs1, jobs2;
  int64_t p = 0;
  for (int64_t e : dec) {
    const int64_t n = offs[e + 1] - offs[e];
    for (int64_t i = 0; i < n; ++i) {
      xs1[p + i] = P.x + slots[offs[e] + i] / P.k * H;
      if (P.xb16) xb1[p + i] = P.xb16 + slots[offs[e] + i] / P.k * H;
      o1[p + i] = gu.data() + (p + i) * 2 * I;
      xs2[p + i] = a.data() + (p + i) * I;
      if (down_bf16) xb2[p + i] = ab.data() + (p + i) * I;
      o2[p + i] = y + (p + i) * H;
    }
    jobs1.push_back(Job{expert_mat(P.w13, e), n, &xs1[p], &o1[p], P.xb16 ? &xb1[p] : nullptr});
    jobs2.push_back(Job{expert_mat(P.w2, e), n, &xs2[p], &o2[p], routed_b16 ? &xb2[p] : nullptr});
    p += n;
  }
  float* gus = gu.data() + npairs * 2 * I;
  float* as = a.data() + npairs * I;
  if (with_shared) {
    for (int64_t t = 0; t < T; ++t) {
      xs1[npairs + t] = xs1[npairs + T + t] = P.x + t * H;
      if (P.xb16) xb1[npairs + t] = xb1[npairs + T + t] = P.xb16 + t * H;
      o1[npairs + t] = gus + t * 2 * Is;
      o1[npairs + T + t] = gus + t * 2 * Is + Is;
      xs2[npairs + t] = as + t * Is;
      if (down_bf16) xb2[npairs + t] = ab.data() + npairs * I + t * Is;
      o2[npairs + t] = ys + t * H;
    }
    Mat m1, m3, m2;
    mat_of(P.sw1, m1);
    mat_of(P.sw3, m3);
    mat_of(P.sw2, m2);
    shared_b16 = takes_bf16(m2);
    jobs1.push_back(Job{m1, T, &xs1[npairs], &o1[npairs], P.xb16 ? &xb1[npairs] : nullptr});
    jobs1.push_back(Job{m3, T, &xs1[npairs + T], &o1[npairs + T], P.xb16 ? &xb1[npairs + T] : nullptr});
    jobs2.push_back(Job{m2, T, &xs2[npairs], &o2[npairs], shared_b16 ? &xb2[npairs] : nullptr});
  }
  run_jobs(K, jobs1);
  // fp32 biases of the decode experts whose activation rows go out as bf16 (act_split_bf16 takes fp32)
  std::vector<at::Tensor> b13_f32(P.b13 && routed_b16 ? dec.size() : 0);
  std::vector<int64_t> dec_index(P.b13 && routed_b16 ? P.E : 0, -1);
  for (size_t j = 0; j < b13_f32.size(); ++j) {
    b13_f32[j] = bias_f32(P.b13, P.b13dt, P.b13_ld, dec[j], 2 * I);
    dec_index[dec[j]] = (int64_t)j;
  }
  // activation rows: decode pairs then the shared rows
  std::vector<std::pair<int64_t, int64_t>> pair_expert(npairs);
  p = 0;
  for (int64_t e : dec)
    for (int64_t i = offs[e]; i < offs[e + 1]; ++i) pair_expert[p++] = {e, i};
  const Act silu{false, false, 0.f, 0.f};
  cpu::parallel_chunks(npairs + ns, std::max<int64_t>(4, 32768 / std::max(I, Is)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (r < npairs) {
        const int64_t e = pair_expert[r].first;
        if (routed_b16) {
          const float* b = P.b13 ? b13_f32[dec_index[e]].data_ptr<float>() : nullptr;
          K.act_split_bf16(gu.data() + r * 2 * I, 1, I, P.act, b, ab.data() + r * I, nullptr);
        } else {
          const void* b = P.b13 ? (const char*)P.b13 + e * P.b13_ld * (P.b13dt == kF32 ? 4 : 2) : nullptr;
          activate_row(P.act, gu.data() + r * 2 * I, b, P.b13dt, I, a.data() + r * I);
        }
      } else {
        const int64_t t = r - npairs;
        if (shared_b16) K.act_split_bf16(gus + t * 2 * Is, 1, Is, silu, nullptr, ab.data() + npairs * I + t * Is, nullptr);
        else activate_row(silu, gus + t * 2 * Is, nullptr, 0, Is, as + t * Is);
      }
    }
  });
  run_jobs(K, jobs2);
}

at::Tensor moe_experts_cpu(const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                           const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                           const std::optional<at::Tensor>& w13_bias, const std::optional<at::Tensor>& w2_bias,
                           c10::string_view activation, double swiglu_alpha, double swiglu_limit, bool interleaved,
                           const std::optional<at::Tensor>& shared_w1, const std::optional<at::Tensor>& shared_w3,
                           const std::optional<at::Tensor>& shared_w2, const std::optional<at::Tensor>& shared_gate) {
  check_experts(hidden, w13, w2, topk_ids, topk_weights, w13_bias, w2_bias, activation, swiglu_alpha, swiglu_limit,
                shared_w1, shared_w3, shared_w2, shared_gate);
  const at::Tensor ids_c = topk_ids.contiguous();
  const int64_t T = hidden.size(0), H = hidden.size(1), E = w13.size(0), I = w13.size(1) / 2, k = ids_c.size(1);
  const int32_t* ids = ids_c.data_ptr<int32_t>();
  check_ids_values(ids, T * k, k, E, "topk_ids", true);
  // slot_row below numbers the kept pairs in int32
  TORCH_CHECK_VALUE(T * k < (int64_t(1) << 31), "topk_ids: expected T * k < 2^31 slots, got T=", T, ", k=", k);
  const bool shared = shared_w1.has_value();
  // kept slots grouped by expert, ascending
  std::vector<int64_t> offs(E + 1, 0);
  for (int64_t s = 0; s < T * k; ++s)
    if (ids[s] >= 0) ++offs[ids[s] + 1];
  for (int64_t e = 0; e < E; ++e) offs[e + 1] += offs[e];
  const int64_t kept = offs[E];
  // (H == 0: an empty [T, 0] result; the work splits below divide by H)
  if (T == 0 || H == 0 || (kept == 0 && !shared)) return at::zeros({T, H}, hidden.options());
  std::vector<int64_t> slots(kept), fill(offs.begin(), offs.end() - 1);
  for (int64_t s = 0; s < T * k; ++s)
    if (ids[s] >= 0) slots[fill[ids[s]]++] = s;

  const at::Tensor tw_c = topk_weights.contiguous();
  Problem P;
  P.T = T, P.H = H, P.E = E, P.I = I, P.k = k, P.Is = shared ? shared_w1->size(0) : 0;
  HiddenF32 xf{hidden, P, at::Tensor()};
  if (hidden.scalar_type() != at::kBFloat16) xf();  // (every path reads it)
  const bool bf16 = hidden.scalar_type() == at::kBFloat16;
  const at::Tensor hidden_c = bf16 ? hidden.contiguous() : at::Tensor();  // (kept alive for xb16)
  P.xb16 = bf16 ? reinterpret_cast<const uint16_t*>(hidden_c.data_ptr<at::BFloat16>()) : nullptr;
  P.ids = ids;
  P.tw = tw_c.data_ptr<float>();
  P.w13 = w13, P.w2 = w2;
  P.b13 = w13_bias ? w13_bias->data_ptr() : nullptr;
  P.b13dt = w13_bias ? dtype_code(w13_bias->scalar_type()) : 0;
  P.b13_ld = w13_bias ? w13_bias->stride(0) : 0;
  P.b2 = w2_bias ? w2_bias->data_ptr() : nullptr;
  P.b2dt = w2_bias ? dtype_code(w2_bias->scalar_type()) : 0;
  P.b2_ld = w2_bias ? w2_bias->stride(0) : 0;
  P.act = Act{activation == "swiglu_oai", interleaved, (float)swiglu_alpha, (float)swiglu_limit};
  P.shared = shared;
  if (shared) {
    Mat m;
    auto usable = [&](const at::Tensor& t) { return mat_of(t, m) ? t : t.contiguous(); };
    P.sw1 = usable(*shared_w1), P.sw3 = usable(*shared_w3), P.sw2 = usable(*shared_w2);
    if (shared_gate.has_value()) {
      const at::Tensor g = shared_gate->reshape({H}).to(at::kFloat).contiguous();
      const float* gp = g.data_ptr<float>();
      xf();
      P.sgate.resize(T);
      for (int64_t t = 0; t < T; ++t) {
        double d = 0;
        for (int64_t h = 0; h < H; ++h) d += (double)P.x[t * H + h] * gp[h];
        P.sgate[t] = 1.0f / (1.0f + std::exp(-(float)d));
      }
    }
  }
  // decode / prefill split. Where both GEMMs of an expert take AMX tiles (bf16 hidden and weights, H and I
  // multiples of 32), the prefill path wins from kAmxGemvMaxTokens + 1 tokens on: AMX reads the weights in place
  // (bf16_gemm.h) and its products cost little, while vdpbf16ps on such CPUs (Xeon) runs at half Zen 4's rate.
  const bool amx_gemm = P.xb16 && cpu::amx_enabled() && w13.scalar_type() == at::kBFloat16 &&
                        w2.scalar_type() == at::kBFloat16 && H % 32 == 0 && I % 32 == 0;
  std::vector<int64_t> dec, small, pre;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = offs[e + 1] - offs[e];
    if (n == 0) continue;
    if (amx_gemm ? n <= kAmxGemvMaxTokens : use_gemv(n, std::max(H, I))) dec.push_back(e);
    else if (amx_gemm && n <= kSmallTokens && small_takes(P, e)) small.push_back(e);
    else pre.push_back(e);
  }
  if ((int64_t)small.size() < kSmallMinExpertsPerThread * at::get_num_threads()) {  // too few to share out evenly
    for (int64_t e : small) (offs[e + 1] - offs[e] <= g_decode_min_tokens.load() ? dec : pre).push_back(e);
    small.clear();
    std::sort(dec.begin(), dec.end());
    std::sort(pre.begin(), pre.end());
  }
  const bool shared_dec = shared && use_gemv(T, std::max(H, P.Is));
  std::vector<int32_t> slot_row(T * k, -1);  // slot -> row of y (decode pairs, then the small experts' pairs)
  int64_t ny = 0;
  for (const std::vector<int64_t>* list : {&dec, &small})
    for (int64_t e : *list)
      for (int64_t i = offs[e]; i < offs[e + 1]; ++i) slot_row[slots[i]] = (int32_t)ny++;
  at::Tensor y = ws_empty({ny, H}, kF32Opts);
  at::Tensor ys = shared ? ws_empty({T, H}, kF32Opts) : at::Tensor();
  float* yp = y.data_ptr<float>();
  float* ysp = shared ? ys.data_ptr<float>() : nullptr;
  if (!dec.empty() || shared_dec) {
    xf();
    decode_all(P, dec, offs, slots, shared_dec, yp, ysp);
  }
  at::Tensor buf;
  if (shared && !shared_dec) shared_prefill(P, xf, buf, ysp);
  if (!small.empty()) {
    std::vector<Scratch> scratch(at::get_num_threads());
    cpu::parallel_chunks((int64_t)small.size(), 1, [&](int64_t j0, int64_t j1) {
      Scratch& sc = scratch[at::get_thread_num()];
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t e = small[j];
        small_expert(P, e, slots.data() + offs[e], offs[e + 1] - offs[e], yp + slot_row[slots[offs[e]]] * H, sc);
      }
    });
  }
  at::Tensor acc;
  if (!pre.empty()) {
    acc = at::zeros({T, H}, kF32Opts);
    Scratch sc;
    for (int64_t e : pre) prefill_expert(P, e, slots.data() + offs[e], offs[e + 1] - offs[e], acc.data_ptr<float>(),
                                         buf, xf, sc);
  }
  // combine per token: prefill sum, decode slots in slot order, shared expert
  at::Tensor out = ws_empty({T, H}, hidden.options());
  const int odt = dtype_code(hidden.scalar_type());
  const float* accp = acc.defined() ? acc.data_ptr<float>() : nullptr;
  const float* twp = P.tw;
  // chunks of >= ~64K multiply-adds: a small call stays on one thread (no fork / join)
  cpu::parallel_chunks(T, std::max<int64_t>(1, 65536 / (H * (k + 1))), [&](int64_t t0, int64_t t1) {
    std::vector<float> row(odt == kF32 ? 0 : H);
    for (int64_t t = t0; t < t1; ++t) {
      float* o = odt == kF32 ? out.data_ptr<float>() + t * H : row.data();
      if (accp) std::copy(accp + t * H, accp + (t + 1) * H, o);
      else std::fill(o, o + H, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const int32_t r = slot_row[t * k + j];
        if (r < 0) continue;
        const float w = twp[t * k + j];
        const float* yr = yp + r * H;
        if (P.b2) {
          const void* b = (const char*)P.b2 + ids[t * k + j] * P.b2_ld * (P.b2dt == kF32 ? 4 : 2);
          for (int64_t h = 0; h < H; ++h) o[h] += (yr[h] + load_any(b, P.b2dt, h)) * w;
        } else {
          for (int64_t h = 0; h < H; ++h) o[h] += yr[h] * w;
        }
      }
      if (shared) {
        const float* s = ysp + t * H;
        if (!P.sgate.empty()) {
          const float g = P.sgate[t];
          for (int64_t h = 0; h < H; ++h) o[h] += s[h] * g;
        } else {
          for (int64_t h = 0; h < H; ++h) o[h] += s[h];
        }
      }
      if (odt == kBF16) {
        auto* d = reinterpret_cast<c10::BFloat16*>(out.data_ptr()) + t * H;
        for (int64_t h = 0; h < H; ++h) d[h] = c10::BFloat16(o[h]);
      } else if (odt == kF16) {
        auto* d = reinterpret_cast<c10::Half*>(out.data_ptr()) + t * H;
        for (int64_t h = 0; h < H; ++h) d[h] = c10::Half(o[h]);
      }
    }
  });
  return out;
}

}  // namespace

bool set_down_split(bool two_parts) { return g_down_parts.exchange(two_parts ? 2 : 1) == 2; }
bool set_poison_workspaces(bool on) { return g_poison.exchange(on); }
int64_t set_gemv_tokens(int64_t n) { return g_decode_min_tokens.exchange(std::max<int64_t>(0, n)); }
int64_t set_gemv_input_bytes(int64_t b) { return g_decode_input_bytes.exchange(std::max<int64_t>(0, b)); }
int64_t set_tile_min_elems(int64_t n) { return g_tile_min_elems.exchange(std::max<int64_t>(0, n)); }
int64_t tile_min_elems() { return g_tile_min_elems.load(std::memory_order_relaxed); }

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("moe_experts", &moe_experts_cpu); }

}  // namespace moe
}  // namespace leankern
