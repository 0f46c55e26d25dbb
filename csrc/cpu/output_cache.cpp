// Output buffer cache (see output_cache.h).
#include "cpu/output_cache.h"

#include <c10/core/Allocator.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace leankern {
namespace cpu {
namespace {

constexpr size_t kMinCached = size_t(1) << 20;  // smaller outputs use at::empty
constexpr size_t kHuge = size_t(2) << 20;

size_t cache_limit_bytes() {
  static const size_t limit = [] {
    const char* e = std::getenv("LEANKERN_OUTPUT_CACHE_MB");
    const long mb = (e && *e) ? std::strtol(e, nullptr, 10) : 512;
    return mb > 0 ? size_t(mb) << 20 : size_t(0);
  }();
  return limit;
}

class OutputAllocator final : public c10::Allocator {
 public:
  static OutputAllocator& get() {
    static OutputAllocator* inst = new OutputAllocator();  // leaked: outputs may outlive static destructors
    return *inst;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    const size_t cap = n < kMinCached ? (n + 63) / 64 * 64 : (n + kHuge - 1) / kHuge * kHuge;
    void* p = n < kMinCached ? nullptr : take(cap);
    if (!p) {
      p = std::aligned_alloc(n < kMinCached ? 64 : kHuge, cap);
      if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      if (cap >= kHuge) (void)madvise(p, cap, MADV_HUGEPAGE);  // a hint; errors are harmless
#endif
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_[p] = cap;
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static void release(void* p) {
    if (p) get().put(p);
  }

  void* take(size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(cap);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= cap;
    return p;
  }

  void put(void* p) {
    size_t cap = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        cap = it->second;
        live_.erase(it);
      }
      if (cap >= kMinCached && cached_ + cap <= cache_limit_bytes()) {
        free_.emplace(cap, p);
        cached_ += cap;
        return;
      }
    }
    std::free(p);
  }

  std::mutex mu_;
  std::unordered_map<void*, size_t> live_;  // buffer -> capacity
  std::multimap<size_t, void*> free_;       // capacity -> cached buffer
  size_t cached_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = (size_t)numel * c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  if (nbytes < kMinCached || cache_limit_bytes() == 0) return at::empty(sizes, opts);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, &OutputAllocator::get(), /*resizable=*/true);
  return at::empty({0}, opts).set_(storage, 0, sizes);
}

}  // namespace cpu
}  // namespace leankern
