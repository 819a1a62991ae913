// lstm_loop.cc: an LSTM's training forward and backward over a whole sequence, as XLA FFI
// handlers: our own loop over time around oneDNN's GEMM (dnnl_sgemm).
//
// Why: on CPU the scan's compiled backward runs far below GEMM speed (it stacks residuals
// and accumulates the weight gradients step by step), and oneDNN 3.2's RNN training
// primitive is slower still on AMD CPUs. Here a forward is one GEMM for the input products
// of all steps, then per step one recurrent GEMM and the gate arithmetic; a backward is per
// step the gate derivatives and one GEMM for the recurrent gradient, then the weight
// gradients and the input gradient as one GEMM each over all steps. So the backward costs
// about twice the forward's FLOPs, at GEMM speed.
//
// Layouts (row-major, rnn_jax's own, so nothing is reordered; gates (i, f, g, o)):
//   x [T, N, I]   h0, c0, hT, cT [N, H]   w_ih [I, 4H]   w_hh [H, 4H]   b [4H]
//   y [T, N, H] in input time order (also for reverse = 1, which reads steps T-1 ... 0).
// b includes the forget bias (rnn_jax/cpu_loop.py folds it in). The forward returns every
// step's hidden state y and cell state cs [T, N, H] (the final carry, at any length, is one
// of their rows: rnn_jax/cpu_loop.py picks it, so the backward takes cotangents dy and dcs
// only) and the gate activations the backward reads:
//   acts [T, N, 4H]  sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o) of each step
// where z = x_t @ w_ih + h_{t-1} @ w_hh + b. Steps t with resets[t, n] = 1 start row n from a
// zero carry (rnn_jax's resets); resets is [T, N] int8, or [0] for none.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using F32 = ffi::Buffer<ffi::F32>;
using RetF32 = ffi::ResultBuffer<ffi::F32>;
using I8 = ffi::Buffer<ffi::S8>;

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
bool Gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
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

ffi::Error CheckShapes(const F32& x, const F32& h0, const F32& w_ih, const F32& w_hh,
                       const F32& b, const I8& resets, Shape* s) {
  auto xd = x.dimensions();
  auto hd = h0.dimensions();
  if (xd.size() != 3 || hd.size() != 2 || hd[0] != xd[1])
    return ffi::Error::InvalidArgument("expected x [T, N, I] and h0 [N, H]");
  *s = Shape{xd[0], xd[1], xd[2], hd[1]};
  if (w_ih.element_count() != size_t(s->I * 4 * s->H) ||
      w_hh.element_count() != size_t(s->H * 4 * s->H) || b.element_count() != size_t(4 * s->H))
    return ffi::Error::InvalidArgument("expected w_ih [I, 4H], w_hh [H, 4H] and b [4H]");
  if (resets.element_count() != 0 && resets.element_count() != size_t(s->T * s->N))
    return ffi::Error::InvalidArgument("expected resets [T, N] or [0]");
  return ffi::Error::Success();
}

// The carry rows [n0, n1) of a step start from: the previous step's (or the initial)
// state `prev` (row n0 first, rows of H), or zeros for the rows that reset at step t
// (copied into `scratch` only when one of them resets).
const float* CarryIn(const float* prev, const int8_t* resets, int64_t t, int64_t N, int64_t n0,
                     int64_t n1, int64_t H, float* scratch) {
  if (resets == nullptr) return prev;
  const int8_t* row = resets + t * N;
  if (std::none_of(row + n0, row + n1, [](int8_t r) { return r != 0; })) return prev;
  for (int64_t n = n0; n < n1; ++n) {
    float* out = scratch + (n - n0) * H;
    if (row[n]) std::memset(out, 0, H * sizeof(float));
    else std::memcpy(out, prev + (n - n0) * H, H * sizeof(float));
  }
  return scratch;
}

// One batch row of a forward step: z [4H] (the step's products, bias not yet added) becomes
// the gate activations; writes the new cell state c [H] and hidden state h [H].
void ForwardRow(int64_t H, const float* __restrict bias, float* __restrict z,
                const float* __restrict c_old, float* __restrict c, float* __restrict h) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = Sigmoid(z[j] + bias[j]);
    const float f = Sigmoid(z[H + j] + bias[H + j]);
    const float g = Tanh(z[2 * H + j] + bias[2 * H + j]);
    const float o = Sigmoid(z[3 * H + j] + bias[3 * H + j]);
    const float c_j = f * c_old[j] + i * g;
    z[j] = i;
    z[H + j] = f;
    z[2 * H + j] = g;
    z[3 * H + j] = o;
    c[j] = c_j;
    h[j] = o * Tanh(c_j);
  }
}

// One batch row of a backward step: from the gate activations a [4H], the step's cell state
// c [H] and the one it read c_old [H], the output's cotangent dy [H] and the cell state's
// dcs [H], and the carry gradients dh, dc [H] arriving from the later step, writes the
// pre-activation gradients dz [4H] and leaves dc_{t-1} in dc.
void BackwardRow(int64_t H, const float* __restrict a, const float* __restrict c,
                 const float* __restrict c_old, const float* __restrict dy,
                 const float* __restrict dcs, const float* __restrict dh,
                 float* __restrict dc, float* __restrict dz) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
    const float dh_j = dy[j] + dh[j];
    const float tc = Tanh(c[j]);
    const float dc_j = dcs[j] + dc[j] + dh_j * o * (1.0f - tc * tc);
    dz[j] = dc_j * g * i * (1.0f - i);
    dz[H + j] = dc_j * c_old[j] * f * (1.0f - f);
    dz[2 * H + j] = dc_j * i * (1.0f - g * g);
    dz[3 * H + j] = dh_j * tc * o * (1.0f - o);
    dc[j] = dc_j * f;
  }
}

ffi::Error Forward(F32 x, F32 h0, F32 c0, F32 w_ih, F32 w_hh, F32 b, I8 resets, RetF32 y,
                   RetF32 cs, RetF32 acts, int32_t reverse) {
  Shape s;
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, b, resets, &s); err.failure()) return err;
  const int64_t T = s.T, N = s.N, I = s.I, H = s.H, G = 4 * H;
  rnn_jax_onednn::SetThreads();
  float* z_all = acts->typed_data();
  float* c_all = cs->typed_data();
  float* y_all = y->typed_data();
  const float* bias = b.typed_data();
  const int8_t* reset = resets.element_count() ? resets.typed_data() : nullptr;
  const float* w = w_hh.typed_data();
  // The input products of every step: one GEMM.
  if (!Gemm('N', 'N', T * N, G, I, x.typed_data(), I, w_ih.typed_data(), G, 0.0f, z_all, G))
    return ffi::Error::Internal("dnnl_sgemm failed (input products)");
  const bool ok = ForEachSlice(N, [&](int64_t n0, int64_t n1) {
    const int64_t rows = n1 - n0;
    float* h_in = static_cast<float*>(rnn_jax_onednn::Slot(6, rows * H * sizeof(float)));
    float* c_in = static_cast<float*>(rnn_jax_onednn::Slot(7, rows * H * sizeof(float)));
    const float* h_prev = h0.typed_data() + n0 * H;
    const float* c_prev = c0.typed_data() + n0 * H;
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const float* h = CarryIn(h_prev, reset, t, N, n0, n1, H, h_in);
      const float* c_old = CarryIn(c_prev, reset, t, N, n0, n1, H, c_in);
      float* z = z_all + (t * N + n0) * G;
      float* c_new = c_all + (t * N + n0) * H;
      float* h_new = y_all + (t * N + n0) * H;
      if (!Gemm('N', 'N', rows, G, H, h, H, w, G, 1.0f, z, G)) return false;
      for (int64_t n = 0; n < rows; ++n)
        ForwardRow(H, bias, z + n * G, c_old + n * H, c_new + n * H, h_new + n * H);
      h_prev = h_new;
      c_prev = c_new;
    }
    return true;
  });
  if (!ok) return ffi::Error::Internal("dnnl_sgemm failed (recurrent product)");
  return ffi::Error::Success();
}

ffi::Error Backward(F32 x, F32 h0, F32 c0, F32 w_ih, F32 w_hh, F32 b, I8 resets, F32 y,
                    F32 cs, F32 acts, F32 dy, F32 dcs, RetF32 dx, RetF32 dh0,
                    RetF32 dc0, RetF32 dw_ih, RetF32 dw_hh, RetF32 db, int32_t reverse) {
  Shape s;
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, b, resets, &s); err.failure()) return err;
  const int64_t T = s.T, N = s.N, I = s.I, H = s.H, G = 4 * H;
  rnn_jax_onednn::SetThreads();
  const int8_t* reset = resets.element_count() ? resets.typed_data() : nullptr;
  float* dz_all = static_cast<float*>(rnn_jax_onednn::Slot(5, T * N * G * sizeof(float)));
  float* h_prev_all = static_cast<float*>(rnn_jax_onednn::Slot(6, T * N * H * sizeof(float)));
  float* dh = dh0->typed_data();  // The running carry gradients, left at dh0 and dc0.
  float* dc = dc0->typed_data();
  std::fill(dh, dh + N * H, 0.0f);
  std::fill(dc, dc + N * H, 0.0f);
  const float* y_all = y.typed_data();
  const float* c_all = cs.typed_data();
  // The hidden state each step read (for w_hh's gradient, one GEMM at the end), by step t.
  for (int64_t step = 0; step < T; ++step) {
    const int64_t t = reverse ? T - 1 - step : step;
    const float* prev = step == 0 ? h0.typed_data() : y_all + (reverse ? t + 1 : t - 1) * N * H;
    float* dst = h_prev_all + t * N * H;
    std::memcpy(dst, prev, N * H * sizeof(float));
    if (reset)
      for (int64_t n = 0; n < N; ++n)
        if (reset[t * N + n]) std::memset(dst + n * H, 0, H * sizeof(float));
  }
  const float* w = w_hh.typed_data();
  const bool ok = ForEachSlice(N, [&](int64_t n0, int64_t n1) {
    const int64_t rows = n1 - n0;
    float* c_in = static_cast<float*>(rnn_jax_onednn::Slot(7, rows * H * sizeof(float)));
    float* dh_rows = dh + n0 * H;
    float* dc_rows = dc + n0 * H;
    for (int64_t step = T - 1; step >= 0; --step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const int64_t prev_t = reverse ? t + 1 : t - 1;
      const float* c_prev = CarryIn(
          step == 0 ? c0.typed_data() + n0 * H : c_all + (prev_t * N + n0) * H, reset, t, N,
          n0, n1, H, c_in);
      const int64_t at = t * N + n0;  // Row n0 of step t.
      const float* a = acts.typed_data() + at * G;
      float* dz = dz_all + at * G;
      for (int64_t n = 0; n < rows; ++n) {
        const int64_t k = n * H;
        BackwardRow(H, a + n * G, c_all + at * H + k, c_prev + k, dy.typed_data() + at * H + k,
                    dcs.typed_data() + at * H + k, dh_rows + k, dc_rows + k, dz + n * G);
      }
      // dh_{t-1} = dz_t @ w_hh^T.
      if (!Gemm('N', 'T', rows, H, G, dz, G, w, G, 0.0f, dh_rows, H)) return false;
      if (reset)  // A reset row's step read zeros, not the previous carry.
        for (int64_t n = n0; n < n1; ++n)
          if (reset[t * N + n]) {
            std::memset(dh + n * H, 0, H * sizeof(float));
            std::memset(dc + n * H, 0, H * sizeof(float));
          }
    }
    return true;
  });
  if (!ok) return ffi::Error::Internal("dnnl_sgemm failed (recurrent gradient)");
  // Weight, bias and input gradients over all steps at once.
  if (!Gemm('T', 'N', H, G, T * N, h_prev_all, H, dz_all, G, 0.0f, dw_hh->typed_data(), G) ||
      !Gemm('T', 'N', I, G, T * N, x.typed_data(), I, dz_all, G, 0.0f, dw_ih->typed_data(), G) ||
      !Gemm('N', 'T', T * N, I, G, dz_all, G, w_ih.typed_data(), G, 0.0f, dx->typed_data(), I))
    return ffi::Error::Internal("dnnl_sgemm failed (weight or input gradients)");
  float* dbias = db->typed_data();
  std::fill(dbias, dbias + G, 0.0f);
  for (int64_t r = 0; r < T * N; ++r) {
    const float* row = dz_all + r * G;
#pragma omp simd
    for (int64_t j = 0; j < G; ++j) dbias[j] += row[j];
  }
  return ffi::Error::Success();
}

}  // namespace

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxLstmLoopForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // w_ih
                                  .Arg<F32>()  // w_hh
                                  .Arg<F32>()  // b
                                  .Arg<I8>()   // resets
                                  .Ret<F32>()  // y
                                  .Ret<F32>()  // cs
                                  .Ret<F32>()  // acts
                                  .Attr<int32_t>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxLstmLoopBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // w_ih
                                  .Arg<F32>()  // w_hh
                                  .Arg<F32>()  // b
                                  .Arg<I8>()   // resets
                                  .Arg<F32>()  // y
                                  .Arg<F32>()  // cs
                                  .Arg<F32>()  // acts
                                  .Arg<F32>()  // dy
                                  .Arg<F32>()  // dcs
                                  .Ret<F32>()  // dx
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>()  // dc0
                                  .Ret<F32>()  // dw_ih
                                  .Ret<F32>()  // dw_hh
                                  .Ret<F32>()  // db
                                  .Attr<int32_t>("reverse"));

#pragma GCC visibility pop
