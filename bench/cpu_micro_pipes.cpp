// One-thread throughput of single 512-bit instructions and pairs / triples of them (independent registers, no
// memory), to see which ones share an execution pipe: if A alone and B alone each run at 1 per cycle and A + B
// together at 2, they use different pipes; at 1, the same one.
//   g++ -O2 -march=x86-64-v4 -o /tmp/pipes bench/cpu_micro_pipes.cpp && /tmp/pipes
// Prints instructions per core cycle: TSC cycles scaled by kTscPerCore (0.71 on the 2-core Zen 4 VM, from a
// vfmadd231ps stream at its known 1 per cycle; set yours). Needs AVX-512.
// Zen 4, 2026-12-05 (logit_stats' exp step, csrc/vocab/kernels_impl.h): at most 2 such instructions per cycle in
// any mix (each takes two of the four 256-bit pipes); FMA / mul and add / sub / max on different pairs (1 per cycle
// each, 2 together); vreduceps and vscalefps 0.5 per cycle and on the add / max pair (add + either: 0.67 pairs per
// cycle); vpaddd / vpandd 2 per cycle alone, vpslld 1.
// Zen 4, 2026-12-06 (the packed SEFP GEMV, csrc/sefp/packed_gemv_vbmi.cpp): vpermb, vpmultishiftqb and vpermt2b 1 per
// cycle alone, 1.5 with each other or with vpunpcklbw / vdpbf16ps / FMA (they hold more than one pipe pair);
// vdpbf16ps and FMA share their pair (1 per cycle together); vpunpcklbw + vdpbf16ps 2 per cycle.
#include <cstdint>
#include <cstdio>
#include <x86intrin.h>

constexpr double kTscPerCore = 0.71;

#define R12(I) I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7) I(8) I(9) I(10) I(11)
#define FMA(i) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define ADD(i) "vaddps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define MAX(i) "vmaxps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define RED(i) "vreduceps $9, %%zmm30, %%zmm" #i "\n"
#define SCF(i) "vscalefps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define RND(i) "vrndscaleps $9, %%zmm30, %%zmm" #i "\n"
#define PAD(i) "vpaddd %%zmm30, %%zmm31, %%zmm" #i "\n"
#define PAN(i) "vpandd %%zmm30, %%zmm31, %%zmm" #i "\n"
#define PSL(i) "vpslld $3, %%zmm30, %%zmm" #i "\n"
#define PMU(i) "vpminud %%zmm30, %%zmm31, %%zmm" #i "\n"
#define PRM(i) "vpermps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define PRW(i) "vpermw %%zmm30, %%zmm31, %%zmm" #i "\n"
#define SRW(i) "vpsrlw $4, %%zmm30, %%zmm" #i "\n"
#define DPB(i) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define GFA(i) "vgf2p8affineqb $0, %%zmm30, %%zmm31, %%zmm" #i "\n"
#define UNP(i) "vpunpcklbw %%zmm30, %%zmm31, %%zmm" #i "\n"
#define PRB(i) "vpermb %%zmm30, %%zmm31, %%zmm" #i "\n"
#define MSH(i) "vpmultishiftqb %%zmm30, %%zmm31, %%zmm" #i "\n"
#define P2B(i) "vpermt2b %%zmm30, %%zmm31, %%zmm" #i "\n"
#define CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"
// best of 7 runs of 2M iterations of `body` (n instructions)
#define BENCH(name, body, n)                                                                  \
  {                                                                                           \
    double best = 1e30;                                                                       \
    for (int r = 0; r < 7; ++r) {                                                             \
      const uint64_t t0 = __rdtsc();                                                          \
      for (long k = 0; k < 2000000; ++k) __asm__ volatile(body ::: "memory", CLOBBER);        \
      const double c = double(__rdtsc() - t0) / 2000000 / kTscPerCore;                        \
      best = c < best ? c : best;                                                             \
    }                                                                                         \
    std::printf("%-22s %.2f per cycle\n", name, (n) / best);                                  \
  }

int main() {
  const float one = 1.0f;
  __asm__ volatile("vbroadcastss %0, %%zmm30\n vbroadcastss %0, %%zmm31\n" ::"m"(one) : "xmm30", "xmm31");
  BENCH("vfmadd231ps", R12(FMA), 12)
  BENCH("vaddps", R12(ADD), 12)
  BENCH("vmaxps", R12(MAX), 12)
  BENCH("vreduceps", R12(RED), 12)
  BENCH("vscalefps", R12(SCF), 12)
  BENCH("vrndscaleps", R12(RND), 12)
  BENCH("vpaddd", R12(PAD), 12)
  BENCH("vpandd", R12(PAN), 12)
  BENCH("vpslld", R12(PSL), 12)
  BENCH("vpminud", R12(PMU), 12)
  BENCH("vpermps", R12(PRM), 12)
  BENCH("fma + add", R12(FMA) R12(ADD), 24)
  BENCH("fma + max", R12(FMA) R12(MAX), 24)
  BENCH("add + max", R12(ADD) R12(MAX), 24)
  BENCH("fma + reduce", R12(FMA) R12(RED), 24)
  BENCH("fma + scalef", R12(FMA) R12(SCF), 24)
  BENCH("add + reduce", R12(ADD) R12(RED), 24)
  BENCH("add + scalef", R12(ADD) R12(SCF), 24)
  BENCH("fma + add + paddd", R12(FMA) R12(ADD) R12(PAD), 36)
  BENCH("fma + add + pslld", R12(FMA) R12(ADD) R12(PSL), 36)
  BENCH("fma + add + vpermps", R12(FMA) R12(ADD) R12(PRM), 36)
  BENCH("vpermw", R12(PRW), 12)
  BENCH("vpsrlw", R12(SRW), 12)
  BENCH("vdpbf16ps", R12(DPB), 12)
  BENCH("vgf2p8affineqb", R12(GFA), 12)
  BENCH("vpunpcklbw", R12(UNP), 12)
  BENCH("vpermw + vdpbf16ps", R12(PRW) R12(DPB), 24)
  BENCH("vpermw + vpsrlw", R12(PRW) R12(SRW), 24)
  BENCH("vpsrlw + vdpbf16ps", R12(SRW) R12(DPB), 24)
  BENCH("vpermw + vpsrlw + dp", R12(PRW) R12(SRW) R12(DPB), 36)
  BENCH("vpermw + vpunpcklbw", R12(PRW) R12(UNP), 24)
  // the packed SEFP GEMV's decode (csrc/sefp/packed_gemv_vbmi.cpp)
  BENCH("vpermb", R12(PRB), 12)
  BENCH("vpmultishiftqb", R12(MSH), 12)
  BENCH("vpermt2b", R12(P2B), 12)
  BENCH("vpermb + vpunpcklbw", R12(PRB) R12(UNP), 24)
  BENCH("vpermb + vpmultishiftqb", R12(PRB) R12(MSH), 24)
  BENCH("vpermb + vdpbf16ps", R12(PRB) R12(DPB), 24)
  BENCH("vpermb + fma", R12(PRB) R12(FMA), 24)
  BENCH("vpunpcklbw + vdpbf16ps", R12(UNP) R12(DPB), 24)
  BENCH("vdpbf16ps + fma", R12(DPB) R12(FMA), 24)
  return 0;
}
