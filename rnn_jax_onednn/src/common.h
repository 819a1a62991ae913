// common.h: what the extension's handlers share: per-thread scratch buffers and the OpenMP
// thread count oneDNN (and our own loops) use inside a handler.
#ifndef RNN_JAX_ONEDNN_COMMON_H_
#define RNN_JAX_ONEDNN_COMMON_H_

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

namespace rnn_jax_onednn {

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
