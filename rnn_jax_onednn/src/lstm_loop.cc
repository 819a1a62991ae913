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
#include "loop_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace rnn_jax_onednn::loop;  // NOLINT: the loops' shared helpers.

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
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, {&b}, resets, 4, &s); err.failure()) return err;
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
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, {&b}, resets, 4, &s); err.failure()) return err;
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
  // The state each step read, for w_hh's gradient (and the GRU's gates).
  StatesRead(T, N, H, reverse, h0.typed_data(), y_all, reset, h_prev_all);
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
  if (!WeightAndInputGradients(T * N, I, H, G, h_prev_all, dz_all, x.typed_data(), dz_all,
                               w_ih.typed_data(), dw_hh->typed_data(), dw_ih->typed_data(),
                               dx->typed_data()))
    return ffi::Error::Internal("dnnl_sgemm failed (weight or input gradients)");
  ColumnSums(dz_all, T * N, G, db->typed_data());
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
