// sgemm_layouts.cc: the per-step GEMMs of the C++ loops (src/lstm_loop.cc, src/gru_loop.cc) timed
// on one thread, as each loop thread runs them: why the backward multiplies by w_hh^T laid out
// plainly (transposed once per call) instead of passing 'T' to dnnl_sgemm.
//
// Build and run from the repository root, with the onednn wheels installed (the extension's
// build requirements: pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0):
//   P=$(python -c "import sys; print(sys.prefix)")
//   g++ -O3 -march=native -fopenmp -I$P/include rnn_jax_onednn/bench/sgemm_layouts.cc \
//       -L$P/lib -l:libdnnl.so.3 -Wl,-rpath,$P/lib -o /tmp/sgemm_layouts && /tmp/sgemm_layouts
// Arguments: rows per thread M (32: a batch of 64 split between 2 threads), H (256), gate
// blocks G (4: LSTM; 3: GRU), steps (256). Prints the fastest of 5 runs of `steps` calls.

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "oneapi/dnnl/dnnl.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <typename Call>
void Time(const char* name, double flops_per_call, int steps, Call call) {
  for (int i = 0; i < 20; ++i) call();
  double best = 1e30;
  for (int run = 0; run < 5; ++run) {
    const double start = Now();
    for (int i = 0; i < steps; ++i) call();
    best = std::min(best, Now() - start);
  }
  std::printf("%-46s %8.3f ms  %6.1f GFLOP/s\n", name, best * 1e3,
              flops_per_call * steps / best / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  const int M = argc > 1 ? std::atoi(argv[1]) : 32, H = argc > 2 ? std::atoi(argv[2]) : 256;
  const int G = (argc > 3 ? std::atoi(argv[3]) : 4) * H, steps = argc > 4 ? std::atoi(argv[4]) : 256;
  omp_set_num_threads(1);  // One loop thread's GEMMs.
  std::vector<float> h(M * H, 0.5f), dz(M * G, 0.5f), w(H * G, 0.01f), w_t(G * H, 0.01f),
      z(M * G), dh(M * H);
  const double flops = 2.0 * M * H * G;
  std::printf("M = %d rows, H = %d, G = %d, %d calls, 1 thread\n", M, H, G, steps);
  Time("forward  z += h @ w_hh         ('N', 'N')", flops, steps, [&] {
    dnnl_sgemm('N', 'N', M, G, H, 1.0f, h.data(), H, w.data(), G, 1.0f, z.data(), G);
  });
  Time("backward dh = dz @ w_hh^T      ('N', 'T')", flops, steps, [&] {
    dnnl_sgemm('N', 'T', M, H, G, 1.0f, dz.data(), G, w.data(), G, 0.0f, dh.data(), H);
  });
  Time("backward dh = dz @ (w_hh^T)    ('N', 'N')", flops, steps, [&] {
    dnnl_sgemm('N', 'N', M, H, G, 1.0f, dz.data(), G, w_t.data(), H, 0.0f, dh.data(), H);
  });
  return 0;
}
