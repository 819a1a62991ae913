// common.h: what the extension's handlers share: per-thread scratch buffers and the OpenMP
// thread count oneDNN (and our own loops) use inside a handler.
#ifndef RNN_JAX_ONEDNN_COMMON_H_
#define RNN_JAX_ONEDNN_COMMON_H_

#include <omp.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

namespace rnn_jax_onednn {

// Asks Linux for 2 MiB pages (transparent huge pages) over the whole 2 MiB blocks of
// [p, p + bytes), if that memory is fresh (its first block's first page not yet touched).
// Why: the loops' residuals are 100 MB and more; glibc's malloc maps such blocks afresh on
// every call, and faulting them in 4 KiB pages cost the LSTM loop 15-20% at (64, 256, 128,
// 256). Memory already in use (tcmalloc's, reused) is left as it is. A hint: where huge
// pages are off ("never") or the call fails, nothing changes; RNN_JAX_ONEDNN_NO_HUGE_PAGES=1
// in the environment turns it off.
inline void PreferHugePages(void* p, size_t bytes) {
  static const bool off = [] {
    const char* value = std::getenv("RNN_JAX_ONEDNN_NO_HUGE_PAGES");
    return value != nullptr && value[0] != '\0' && value[0] != '0';
  }();
  if (off) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end <= begin) return;
  unsigned char resident = 1;
  void* block = reinterpret_cast<void*>(begin);
  if (mincore(block, 1, &resident) == 0 && !(resident & 1))
    madvise(block, end - begin, MADV_HUGEPAGE);
}

// Per-thread 64-byte-aligned buffers, grown on demand and kept between calls; `index` < 10
// names a buffer, used within one handler call (rnn_jax_onednn.cc uses 0-4, the loops 4-9).
inline void* Slot(int index, size_t bytes) {
  struct Slots {
    std::vector<std::pair<size_t, void*>> s = std::vector<std::pair<size_t, void*>>(10);
    ~Slots() {
      for (auto& [size, ptr] : s) std::free(ptr);
    }
  };
  thread_local Slots slots;
  auto& [size, ptr] = slots.s[index];
  if (size < bytes) {
    std::free(ptr);
    size = (bytes + 63) / 64 * 64;
    ptr = std::aligned_alloc(64, size);
    PreferHugePages(ptr, size);
  }
  return ptr;
}

// OpenMP threads inside the handlers; 0: OpenMP's own default.
inline std::atomic<int> g_num_threads{0};

// Applies g_num_threads to the calling thread (OpenMP's setting is per thread).
inline void SetThreads() {
  const int n = g_num_threads.load();
  if (n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
}

}  // namespace rnn_jax_onednn

#endif  // RNN_JAX_ONEDNN_COMMON_H_
