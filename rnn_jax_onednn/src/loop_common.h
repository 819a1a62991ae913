// loop_common.h: what the C++ loops over time (lstm_loop.cc, gru_loop.cc) share: the
// FFI buffer types, exp/sigmoid/tanh that vectorise, oneDNN's GEMM, the split of a batch
// between threads, the shape checks and the carry a step reads under resets.
#ifndef RNN_JAX_ONEDNN_LOOP_COMMON_H_
#define RNN_JAX_ONEDNN_LOOP_COMMON_H_

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "common.h"
#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace rnn_jax_onednn::loop {

namespace ffi = xla::ffi;

using F32 = ffi::Buffer<ffi::F32>;
using RetF32 = ffi::ResultBuffer<ffi::F32>;
using I8 = ffi::Buffer<ffi::S8>;
using I32 = ffi::Buffer<ffi::S32>;

// exp(x) without libm, so that the gate loops vectorise: Cephes' expf (range reduction by
// ln 2, a degree-5 polynomial; relative error under 2e-7 on [-87, 88]).
inline float Exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // Keeps 2^n a normal float.
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  // 2^n, built in the exponent field.
  return e * __builtin_bit_cast(float, (int32_t(n) + 127) << 23);
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

// tanh from exp(-2|x|), with its odd Taylor series near 0 where 1 - e would cancel.
inline float Tanh(float x) {
  const float a = std::fabs(x);
  const float e = Exp(-2.0f * a);
  const float far = (1.0f - e) / (1.0f + e);
  const float a2 = a * a;
  const float near = a * (1.0f + a2 * (-0.333333333f + a2 * (0.133333333f + a2 * -0.053968254f)));
  return std::copysign(a < 0.0625f ? near : far, x);
}

// Row-major C = alpha * op(A) @ op(B) + beta * C by oneDNN; throws nothing (checks status).
inline bool Gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return true;
  if (k == 0) {  // oneDNN wants k > 0; C = beta * C.
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < n; ++j) c[r * ldc + j] = beta == 0.0f ? 0.0f : beta * c[r * ldc + j];
    return true;
  }
  return dnnl_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc) == dnnl_success;
}

// The loop over time is split by batch rows, which never interact: each thread runs every
// step for its own slice of rows (its own single-threaded GEMMs) and the threads meet once,
// at the end. One OpenMP team per call: inside an XLA program, multi-threaded GEMMs at
// every step made the per-step GEMMs 1.5-5x slower (at (64, 256, 128, 256) and
// (16, 784, 1, 128)). A slice has at least kMinRows rows.
constexpr int64_t kMinRows = 8;

// Runs rows(n0, n1) -> bool on slices of [0, N), one per thread of the extension's team
// (rnn_jax_onednn.set_num_threads); true if every slice returned true.
template <typename Rows>
bool ForEachSlice(int64_t N, Rows&& rows) {
  const int64_t team = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), N / kMinRows));
  bool ok = true;
#pragma omp parallel num_threads(team) reduction(&& : ok)
  {
    const int64_t k = omp_get_thread_num(), n = omp_get_num_threads();
    const int outer = omp_get_max_threads();
    omp_set_num_threads(1);  // This thread's GEMMs: one thread (no nested team).
    ok = rows(N * k / n, N * (k + 1) / n);
    omp_set_num_threads(outer);
  }
  return ok;
}

struct Shape {
  int64_t T, N, I, H;
};

// Sequence arrays are batch-major, [N, T, F] (rnn_jax's default layout, so that XLA has no
// transposes to make around the calls): row (t, n) is n * T + t, and the rows n0, n0 + 1, ...
// of one step are T rows apart.
inline int64_t Row(int64_t T, int64_t t, int64_t n) { return n * T + t; }

// Checks x [N, T, I], h0 [N, H], w_ih [I, G*H], w_hh [H, G*H], the biases [G*H], resets
// [T, N] or [0] and lengths [N] or [0] (read forwards only); fills *s.
inline ffi::Error CheckShapes(const F32& x, const F32& h0, const F32& w_ih, const F32& w_hh,
                              std::initializer_list<const F32*> biases, const I8& resets,
                              const I32& lengths, bool reverse, int64_t gates, Shape* s) {
  auto xd = x.dimensions();
  auto hd = h0.dimensions();
  if (xd.size() != 3 || hd.size() != 2 || hd[0] != xd[0])
    return ffi::Error::InvalidArgument("expected x [N, T, I] and h0 [N, H]");
  *s = Shape{xd[1], xd[0], xd[2], hd[1]};
  const size_t width = size_t(gates * s->H);
  bool ok = w_ih.element_count() == size_t(s->I) * width &&
            w_hh.element_count() == size_t(s->H) * width;
  for (const F32* b : biases) ok = ok && b->element_count() == width;
  if (!ok) return ffi::Error::InvalidArgument("weights or biases of the wrong size");
  if (resets.element_count() != 0 && resets.element_count() != size_t(s->T * s->N))
    return ffi::Error::InvalidArgument("expected resets [T, N] or [0]");
  if (lengths.element_count() != 0 && (lengths.element_count() != size_t(s->N) || reverse))
    return ffi::Error::InvalidArgument("expected lengths [N] or [0], and [0] with reverse = 1");
  return ffi::Error::Success();
}

// Each row's valid steps: row n runs steps t < length(n) (every step without lengths; steps
// past a length are computed and then dropped: their outputs are zeroed, their gradients
// are zero). The final carry is the state after the last step read: step length(n) - 1
// reading forwards, step 0 reading backwards (whole sequences), none for length 0.
struct Lengths {
  const int32_t* lengths;  // [N], or nullptr: T each.
  int64_t T;
  bool reverse;
  Lengths(const I32& buffer, int64_t steps, bool read_backwards)
      : lengths(buffer.element_count() ? buffer.typed_data() : nullptr), T(steps),
        reverse(read_backwards) {}
  int64_t operator()(int64_t n) const { return lengths ? lengths[n] : T; }
  // The step whose state is row n's final carry, or -1 (length 0: the initial carry).
  int64_t Last(int64_t n) const {
    const int64_t length = (*this)(n);
    return length == 0 ? -1 : (reverse ? 0 : length - 1);
  }
};

// For rows [n0, n1): final [N, H] <- each row's state at its last step in states [N, T, H]
// (initial [N, H] for an empty sequence); then, if zero_padding, zeroes states past each length.
inline void FinalAndPadding(const Lengths& lengths, int64_t H, int64_t n0, int64_t n1,
                            const float* initial, float* states, float* final,
                            bool zero_padding) {
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t last = lengths.Last(n);
    const float* from = last < 0 ? initial + n * H : states + Row(lengths.T, last, n) * H;
    std::memcpy(final + n * H, from, H * sizeof(float));
    if (zero_padding)
      for (int64_t t = lengths(n); t < lengths.T; ++t)
        std::memset(states + Row(lengths.T, t, n) * H, 0, H * sizeof(float));
  }
}

// A step's carry rows [n0, n1): `rows` of H floats, `ld` floats apart.
struct Carry {
  const float* rows;
  int64_t ld;
};

// The carry rows [n0, n1) of step t start from: the previous step's (or the initial) state
// `prev` (row n0 first), or zeros for the rows that reset at step t (then copied into
// `scratch`, H floats apart, only when one of them resets). resets [T, N] or nullptr.
inline Carry CarryIn(Carry prev, const int8_t* resets, int64_t t, int64_t N, int64_t n0,
                     int64_t n1, int64_t H, float* scratch) {
  if (resets == nullptr) return prev;
  const int8_t* row = resets + t * N;
  if (std::none_of(row + n0, row + n1, [](int8_t r) { return r != 0; })) return prev;
  for (int64_t n = n0; n < n1; ++n) {
    float* out = scratch + (n - n0) * H;
    if (row[n]) std::memset(out, 0, H * sizeof(float));
    else std::memcpy(out, prev.rows + (n - n0) * prev.ld, H * sizeof(float));
  }
  return Carry{scratch, H};
}

// The hidden state each step read, into h_read [N, T, H]: the previous step's output in
// y [N, T, H] (h0 [N, H] for the first step read), zeros for rows that reset at step t.
inline void StatesRead(int64_t T, int64_t N, int64_t H, bool reverse, const float* h0,
                       const float* y, const int8_t* resets, float* h_read) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const float* prev = step == 0 ? h0 + n * H : y + Row(T, reverse ? t + 1 : t - 1, n) * H;
      float* dst = h_read + Row(T, t, n) * H;
      if (resets && resets[t * N + n]) std::memset(dst, 0, H * sizeof(float));
      else std::memcpy(dst, prev, H * sizeof(float));
    }
}

// m [rows, cols] transposed into the calling thread's Slot(slot) [cols, rows]. Why: oneDNN's
// sgemm with a transposed B ran at half the speed of the same product with B laid out
// plainly (dz_t @ w_hh^T at 32 rows: 124 against 240 GFLOP/s on one core), so the backward
// transposes its weights once per call.
inline const float* Transposed(const float* m, int64_t rows, int64_t cols, int slot) {
  float* t = static_cast<float*>(rnn_jax_onednn::Slot(slot, rows * cols * sizeof(float)));
  constexpr int64_t kBlock = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) t[c * rows + r] = m[r * cols + c];
  return t;
}

// The gradients over all R = T * N rows at once, from the input pre-activations' gradients
// da [R, G] and the recurrent ones du [R, G] (the same array for an LSTM): dw_hh = h_read^T @ du,
// dw_ih = x^T @ da and dx = da @ w_ih^T (w_ih_t = w_ih^T [G, I]); false if a GEMM failed.
inline bool WeightAndInputGradients(int64_t R, int64_t I, int64_t H, int64_t G,
                                    const float* h_read, const float* du, const float* x,
                                    const float* da, const float* w_ih_t, float* dw_hh,
                                    float* dw_ih, float* dx) {
  return Gemm('T', 'N', H, G, R, h_read, H, du, G, 0.0f, dw_hh, G) &&
         Gemm('T', 'N', I, G, R, x, I, da, G, 0.0f, dw_ih, G) &&
         Gemm('N', 'N', R, I, G, da, G, w_ih_t, I, 0.0f, dx, I);
}

// sums[j] = sum over rows r of m[r, j], for m [rows, width] (a bias's gradient).
inline void ColumnSums(const float* m, int64_t rows, int64_t width, float* sums) {
  std::fill(sums, sums + width, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = m + r * width;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) sums[j] += row[j];
  }
}

}  // namespace rnn_jax_onednn::loop

#endif  // RNN_JAX_ONEDNN_LOOP_COMMON_H_
