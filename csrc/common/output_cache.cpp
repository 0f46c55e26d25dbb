// Output buffer cache (see output_cache.h).
#include "common/output_cache.h"

#include <c10/core/Allocator.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace leankern {
namespace cpu {
namespace {

constexpr size_t kMinCached = size_t(1) << 20;  // smaller outputs use at::empty
constexpr size_t kHuge = size_t(2) << 20;

size_t initial_limit_bytes() {
  // a whole number of MB, nothing else ("1e9" is not 1): anything else leaves the cache off, and leankern's import
  // raises on it (core.py, with the other LEANKERN_* variables)
  const char* e = std::getenv("LEANKERN_OUTPUT_CACHE_MB");
  if (!e || !*e) return 0;
  char* end = nullptr;
  const long long mb = std::strtoll(e, &end, 10);
  if (*end != '\0' || mb <= 0 || mb > (1LL << 30)) return 0;
  return size_t(mb) << 20;
}

class OutputAllocator final : public c10::Allocator {
 public:
  static OutputAllocator& get() {
    static OutputAllocator* inst = new OutputAllocator();  // leaked: outputs may outlive static destructors
    return *inst;
  }

  bool enabled() const { return limit_.load(std::memory_order_relaxed) > 0; }

  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    const size_t cap = (n + kHuge - 1) / kHuge * kHuge;  // empty_output sends >= 1 MiB only
    void* p = take(cap);
    if (!p) {
      p = std::aligned_alloc(kHuge, cap);
      if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      (void)madvise(p, cap, MADV_HUGEPAGE);  // a hint; errors are harmless
#endif
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_[p] = cap;
      live_bytes_ += cap;
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void set_limit(size_t bytes) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_.store(bytes, std::memory_order_relaxed);
      trim_locked(bytes, &drop);
    }
    for (void* p : drop) std::free(p);
  }

  void flush() {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      trim_locked(0, &drop);
    }
    for (void* p : drop) std::free(p);
  }

  OutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {limit_.load(std::memory_order_relaxed), cached_, live_bytes_, hits_, misses_};
  }

 private:
  static void release(void* p) {
    if (p) get().put(p);
  }

  // A kept buffer of exactly `cap` bytes, or nullptr (counted as a hit / miss).
  void* take(size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(cap);
    if (it == free_.end()) {
      ++misses_;
      return nullptr;
    }
    void* p = it->second;
    free_.erase(it);
    cached_ -= cap;
    ++hits_;
    return p;
  }

  void put(void* p) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      const size_t cap = it != live_.end() ? it->second : 0;
      if (it != live_.end()) {
        live_.erase(it);
        live_bytes_ -= cap;
      }
      if (cap > 0 && cached_ + cap <= limit_.load(std::memory_order_relaxed)) {
        free_.emplace(cap, p);
        cached_ += cap;
        return;
      }
    }
    std::free(p);
  }

  // Move kept buffers (largest first) to *drop until cached_ <= bytes. Caller holds mu_.
  void trim_locked(size_t bytes, std::vector<void*>* drop) {
    while (cached_ > bytes && !free_.empty()) {
      auto it = std::prev(free_.end());
      cached_ -= it->first;
      drop->push_back(it->second);
      free_.erase(it);
    }
  }

  std::mutex mu_;
  std::atomic<size_t> limit_{initial_limit_bytes()};
  std::unordered_map<void*, size_t> live_;  // buffer -> capacity
  std::multimap<size_t, void*> free_;       // capacity -> kept buffer
  size_t cached_ = 0, live_bytes_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = (size_t)numel * c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  OutputAllocator& alloc = OutputAllocator::get();
  if (nbytes < kMinCached || !alloc.enabled()) return at::empty(sizes, opts);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, &alloc, /*resizable=*/true);
  return at::empty({0}, opts).set_(storage, 0, sizes);
}

void output_cache_set_limit(size_t limit_bytes) { OutputAllocator::get().set_limit(limit_bytes); }
void output_cache_flush() { OutputAllocator::get().flush(); }
OutputCacheStats output_cache_stats() { return OutputAllocator::get().stats(); }

}  // namespace cpu
}  // namespace leankern
