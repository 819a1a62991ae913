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
//   x [N, T, I]   h0, c0, h_final, c_final [N, H]   w_ih [I, 4H]   w_hh [H, 4H]   b [4H]
//   y [N, T, H] in input time order (also for reverse = 1, which reads steps T-1 ... 0).
// Sequences are batch-major, as rnn_jax's inputs and outputs are by default (loop_common.h).
// b includes the forget bias (rnn_jax/cpu_loop.py folds it in). lengths [N] int32 (or [0]:
// whole sequences; reading forwards only): row n's outputs past its length are zero and its
// final carry is its state after step length - 1 (loop_common.h, Lengths). resets [T, N]
// int8, time-major (or [0]): steps t with resets[t, n] = 1 start row n from a zero carry. The forward
// returns y, the final carry, and for the backward every step's cell state cs [N, T, H] and
// the gate activations
//   acts [N, T, 4H]  sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o) of each step
// where z = x_t @ w_ih + h_{t-1} @ w_hh + b (acts of shape [0]: a forward nobody
// differentiates, which keeps them in scratch). The backward takes the cotangents of y and
// of the final carry.

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
// c [H] and the one it read c_old [H], the output's cotangent dy [H], and the carry gradients
// dh, dc [H] arriving from the later step, writes the pre-activation gradients dz [4H] and
// leaves dc_{t-1} in dc.
void BackwardRow(int64_t H, const float* __restrict a, const float* __restrict c,
                 const float* __restrict c_old, const float* __restrict dy,
                 const float* __restrict dh, float* __restrict dc, float* __restrict dz) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
    const float dh_j = dy[j] + dh[j];
    const float tc = Tanh(c[j]);
    const float dc_j = dc[j] + dh_j * o * (1.0f - tc * tc);
    dz[j] = dc_j * g * i * (1.0f - i);
    dz[H + j] = dc_j * c_old[j] * f * (1.0f - f);
    dz[2 * H + j] = dc_j * i * (1.0f - g * g);
    dz[3 * H + j] = dh_j * tc * o * (1.0f - o);
    dc[j] = dc_j * f;
  }
}

ffi::Error Forward(F32 x, F32 h0, F32 c0, F32 w_ih, F32 w_hh, F32 b, I8 resets, I32 lengths,
                   RetF32 y, RetF32 h_final, RetF32 c_final, RetF32 cs, RetF32 acts,
                   int32_t reverse) {
  Shape s;
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, {&b}, resets, lengths, reverse, 4, &s);
      err.failure())
    return err;
  const int64_t T = s.T, N = s.N, I = s.I, H = s.H, G = 4 * H;
  rnn_jax_onednn::SetThreads();
  const Lengths valid(lengths, T, reverse);
  // acts of shape [0]: a forward nobody differentiates; the activations go to scratch.
  const bool save = acts->element_count() != 0;
  float* z_all = save ? acts->typed_data()
                      : static_cast<float*>(rnn_jax_onednn::Slot(4, T * N * G * sizeof(float)));
  float* c_all = cs->typed_data();
  float* y_all = y->typed_data();
  const float* bias = b.typed_data();
  const int8_t* reset = resets.element_count() ? resets.typed_data() : nullptr;
  const float* w = w_hh.typed_data();
  // The input products of every step: one GEMM (the rows of x and z in the same order).
  if (!Gemm('N', 'N', T * N, G, I, x.typed_data(), I, w_ih.typed_data(), G, 0.0f, z_all, G))
    return ffi::Error::Internal("dnnl_sgemm failed (input products)");
  const bool ok = ForEachSlice(N, [&](int64_t n0, int64_t n1) {
    const int64_t rows = n1 - n0;
    float* h_in = static_cast<float*>(rnn_jax_onednn::Slot(6, rows * H * sizeof(float)));
    float* c_in = static_cast<float*>(rnn_jax_onednn::Slot(7, rows * H * sizeof(float)));
    Carry h_prev{h0.typed_data() + n0 * H, H}, c_prev{c0.typed_data() + n0 * H, H};
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const Carry h = CarryIn(h_prev, reset, t, N, n0, n1, H, h_in);
      const Carry c_old = CarryIn(c_prev, reset, t, N, n0, n1, H, c_in);
      const int64_t at = Row(T, t, n0);  // Row n0 of step t; its rows are T apart.
      float* z = z_all + at * G;
      float* c_new = c_all + at * H;
      float* h_new = y_all + at * H;
      if (!Gemm('N', 'N', rows, G, H, h.rows, h.ld, w, G, 1.0f, z, T * G)) return false;
      for (int64_t n = 0; n < rows; ++n)
        ForwardRow(H, bias, z + n * T * G, c_old.rows + n * c_old.ld, c_new + n * T * H,
                   h_new + n * T * H);
      h_prev = Carry{h_new, T * H};
      c_prev = Carry{c_new, T * H};
    }
    FinalAndPadding(valid, H, n0, n1, c0.typed_data(), c_all, c_final->typed_data(), false);
    FinalAndPadding(valid, H, n0, n1, h0.typed_data(), y_all, h_final->typed_data(),
                    valid.lengths != nullptr);
    return true;
  });
  if (!ok) return ffi::Error::Internal("dnnl_sgemm failed (recurrent product)");
  return ffi::Error::Success();
}

ffi::Error Backward(F32 x, F32 h0, F32 c0, F32 w_ih, F32 w_hh, F32 b, I8 resets, I32 lengths,
                    F32 y, F32 cs, F32 acts, F32 dy, F32 dh_final, F32 dc_final, RetF32 dx,
                    RetF32 dh0, RetF32 dc0, RetF32 dw_ih, RetF32 dw_hh, RetF32 db,
                    int32_t reverse) {
  Shape s;
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, {&b}, resets, lengths, reverse, 4, &s);
      err.failure())
    return err;
  const int64_t T = s.T, N = s.N, I = s.I, H = s.H, G = 4 * H;
  rnn_jax_onednn::SetThreads();
  const Lengths valid(lengths, T, reverse);
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
  const float* w_t = Transposed(w_hh.typed_data(), H, G, 8);  // w_hh^T [4H, H].
  const bool ok = ForEachSlice(N, [&](int64_t n0, int64_t n1) {
    const int64_t rows = n1 - n0;
    float* c_in = static_cast<float*>(rnn_jax_onednn::Slot(7, rows * H * sizeof(float)));
    float* dh_rows = dh + n0 * H;
    float* dc_rows = dc + n0 * H;
    for (int64_t step = T - 1; step >= 0; --step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const int64_t at = Row(T, t, n0);  // Row n0 of step t; its rows are T apart.
      const Carry c_prev = CarryIn(
          step == 0 ? Carry{c0.typed_data() + n0 * H, H}
                    : Carry{c_all + Row(T, reverse ? t + 1 : t - 1, n0) * H, T * H},
          reset, t, N, n0, n1, H, c_in);
      float* dz = dz_all + at * G;
      for (int64_t n = 0; n < rows; ++n) {
        const int64_t k = n * H, row = at + n * T;
        if (t >= valid(n0 + n)) {  // Past the length: no gradient (the carries stay zero).
          std::memset(dz + n * T * G, 0, G * sizeof(float));
          continue;
        }
        if (t == valid.Last(n0 + n))  // The final carry's cotangents enter here.
          for (int64_t j = 0; j < H; ++j) {
            dh_rows[k + j] += dh_final.typed_data()[(n0 + n) * H + j];
            dc_rows[k + j] += dc_final.typed_data()[(n0 + n) * H + j];
          }
        BackwardRow(H, acts.typed_data() + row * G, c_all + row * H, c_prev.rows + n * c_prev.ld,
                    dy.typed_data() + row * H, dh_rows + k, dc_rows + k, dz + n * T * G);
      }
      // dh_{t-1} = dz_t @ w_hh^T.
      if (!Gemm('N', 'N', rows, H, G, dz, T * G, w_t, H, 0.0f, dh_rows, H)) return false;
      if (reset)  // A reset row's step read zeros, not the previous carry.
        for (int64_t n = n0; n < n1; ++n)
          if (reset[t * N + n]) {
            std::memset(dh + n * H, 0, H * sizeof(float));
            std::memset(dc + n * H, 0, H * sizeof(float));
          }
    }
    for (int64_t n = n0; n < n1; ++n)  // An empty sequence's final carry is its initial one.
      if (valid.Last(n) < 0) {
        std::memcpy(dh + n * H, dh_final.typed_data() + n * H, H * sizeof(float));
        std::memcpy(dc + n * H, dc_final.typed_data() + n * H, H * sizeof(float));
      }
    return true;
  });
  if (!ok) return ffi::Error::Internal("dnnl_sgemm failed (recurrent gradient)");
  // Weight, bias and input gradients over all steps at once.
  if (!WeightAndInputGradients(T * N, I, H, G, h_prev_all, dz_all, x.typed_data(), dz_all,
                               Transposed(w_ih.typed_data(), I, G, 9), dw_hh->typed_data(),
                               dw_ih->typed_data(), dx->typed_data()))
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
                                  .Arg<I32>()  // lengths
                                  .Ret<F32>()  // y
                                  .Ret<F32>()  // h_final
                                  .Ret<F32>()  // c_final
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
                                  .Arg<I32>()  // lengths
                                  .Arg<F32>()  // y
                                  .Arg<F32>()  // cs
                                  .Arg<F32>()  // acts
                                  .Arg<F32>()  // dy
                                  .Arg<F32>()  // dh_final
                                  .Arg<F32>()  // dc_final
                                  .Ret<F32>()  // dx
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>()  // dc0
                                  .Ret<F32>()  // dw_ih
                                  .Ret<F32>()  // dw_hh
                                  .Ret<F32>()  // db
                                  .Attr<int32_t>("reverse"));

#pragma GCC visibility pop
