// gru_loop.cc: a GRU's (reset_after, PyTorch's and cuDNN's) training forward and backward
// over a whole sequence, as XLA FFI handlers: the same loop as lstm_loop.cc (one GEMM for
// the input products of all steps; per step one recurrent GEMM and the gates; per step of the
// backward one GEMM for the carry's gradient; the weight and input gradients as one GEMM
// each over all steps; the batch split between threads).
//
// Layouts (row-major, rnn_jax's own; gates (r, z, n)):
//   x [N, T, I]   h0 [N, H]   w_ih [I, 3H]   w_hh [H, 3H]   b_ih, b_hh [3H]
//   y [N, T, H] in input time order (reverse = 1 reads steps T-1 ... 0); batch-major, as in
//   lstm_loop.cc
// With a = x_t @ w_ih + b_ih and u = h_{t-1} @ w_hh + b_hh:
//   r = sigmoid(a_r + u_r)   z = sigmoid(a_z + u_z)   n = tanh(a_n + r * u_n)
//   h_t = (1 - z) * n + z * h_{t-1}
// The forward returns y, the final carry h_final [N, H] and acts [N, T, 4H] = (r, z, n, u_n)
// of each step, which the backward reads (acts of shape [0]: a forward nobody differentiates);
// the backward takes the cotangents of y and h_final. resets [T, N] int8 (or [0]; time-major): rows that
// start from a zero carry at step t; lengths [N] int32 (or [0]) as in lstm_loop.cc.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "loop_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace rnn_jax_onednn::loop;  // NOLINT: the loops' shared helpers.

// One batch row of a forward step: a [3H] (input products, b_ih included) and u [3H]
// (recurrent products, b_hh not yet added) give the new state h [H] from h_old [H]; the
// activations (r, z, n, u_n) go to acts [4H].
void ForwardRow(int64_t H, const float* __restrict b_hh, const float* __restrict a,
                const float* __restrict u, const float* __restrict h_old,
                float* __restrict h, float* __restrict acts) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = Sigmoid(a[j] + u[j] + b_hh[j]);
    const float z = Sigmoid(a[H + j] + u[H + j] + b_hh[H + j]);
    const float u_n = u[2 * H + j] + b_hh[2 * H + j];
    const float n = Tanh(a[2 * H + j] + r * u_n);
    h[j] = (1.0f - z) * n + z * h_old[j];
    acts[j] = r;
    acts[H + j] = z;
    acts[2 * H + j] = n;
    acts[3 * H + j] = u_n;
  }
}

// One batch row of a backward step: from acts [4H], the state the step read h_old [H], the
// output's cotangent dy [H] and the carry's gradient dh [H] from the later step, writes the
// input pre-activations' gradients da [3H] and the recurrent ones du [3H], and the direct
// part of dh_{t-1} (dh * z) into dh_direct [H].
void BackwardRow(int64_t H, const float* __restrict acts, const float* __restrict h_old,
                 const float* __restrict dy, const float* __restrict dh,
                 float* __restrict da, float* __restrict du, float* __restrict dh_direct) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = acts[j], z = acts[H + j], n = acts[2 * H + j], u_n = acts[3 * H + j];
    const float dh_j = dy[j] + dh[j];
    const float dn = dh_j * (1.0f - z) * (1.0f - n * n);
    const float dz = dh_j * (h_old[j] - n) * z * (1.0f - z);
    const float dr = dn * u_n * r * (1.0f - r);
    da[j] = dr;
    da[H + j] = dz;
    da[2 * H + j] = dn;
    du[j] = dr;
    du[H + j] = dz;
    du[2 * H + j] = dn * r;
    dh_direct[j] = dh_j * z;
  }
}

ffi::Error Forward(F32 x, F32 h0, F32 w_ih, F32 w_hh, F32 b_ih, F32 b_hh, I8 resets,
                   I32 lengths, RetF32 y, RetF32 h_final, RetF32 acts, int32_t reverse) {
  Shape s;
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, {&b_ih, &b_hh}, resets, lengths, reverse, 3, &s);
      err.failure())
    return err;
  const int64_t T = s.T, N = s.N, I = s.I, H = s.H, G = 3 * H;
  rnn_jax_onednn::SetThreads();
  const Lengths valid(lengths, T, reverse);
  const int8_t* reset = resets.element_count() ? resets.typed_data() : nullptr;
  float* y_all = y->typed_data();
  // acts of shape [0]: a forward nobody differentiates; each step's activations go to scratch.
  const bool save = acts->element_count() != 0;
  float* acts_all = acts->typed_data();
  // The input products of every step, with b_ih: one GEMM into a scratch [N, T, 3H].
  float* a_all = static_cast<float*>(rnn_jax_onednn::Slot(5, T * N * G * sizeof(float)));
  for (int64_t row = 0; row < T * N; ++row)
    std::memcpy(a_all + row * G, b_ih.typed_data(), G * sizeof(float));
  if (!Gemm('N', 'N', T * N, G, I, x.typed_data(), I, w_ih.typed_data(), G, 1.0f, a_all, G))
    return ffi::Error::Internal("dnnl_sgemm failed (input products)");
  const bool ok = ForEachSlice(N, [&](int64_t n0, int64_t n1) {
    const int64_t rows = n1 - n0;
    float* h_in = static_cast<float*>(rnn_jax_onednn::Slot(6, rows * H * sizeof(float)));
    float* u = static_cast<float*>(rnn_jax_onednn::Slot(7, rows * G * sizeof(float)));
    float* scratch =
        save ? nullptr : static_cast<float*>(rnn_jax_onednn::Slot(8, rows * 4 * H * sizeof(float)));
    Carry h_prev{h0.typed_data() + n0 * H, H};
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const Carry h = CarryIn(h_prev, reset, t, N, n0, n1, H, h_in);
      const int64_t at = Row(T, t, n0);  // Row n0 of step t; its rows are T apart.
      if (!Gemm('N', 'N', rows, G, H, h.rows, h.ld, w_hh.typed_data(), G, 0.0f, u, G))
        return false;
      float* h_new = y_all + at * H;
      for (int64_t n = 0; n < rows; ++n) {
        const int64_t row = at + n * T;
        ForwardRow(H, b_hh.typed_data(), a_all + row * G, u + n * G, h.rows + n * h.ld,
                   h_new + n * T * H, save ? acts_all + row * 4 * H : scratch + n * 4 * H);
      }
      h_prev = Carry{h_new, T * H};
    }
    FinalAndPadding(valid, H, n0, n1, h0.typed_data(), y_all, h_final->typed_data(),
                    valid.lengths != nullptr);
    return true;
  });
  if (!ok) return ffi::Error::Internal("dnnl_sgemm failed (recurrent product)");
  return ffi::Error::Success();
}

ffi::Error Backward(F32 x, F32 h0, F32 w_ih, F32 w_hh, F32 b_ih, F32 b_hh, I8 resets,
                    I32 lengths, F32 y, F32 acts, F32 dy, F32 dh_final, RetF32 dx, RetF32 dh0,
                    RetF32 dw_ih, RetF32 dw_hh, RetF32 db_ih, RetF32 db_hh, int32_t reverse) {
  Shape s;
  if (auto err = CheckShapes(x, h0, w_ih, w_hh, {&b_ih, &b_hh}, resets, lengths, reverse, 3, &s);
      err.failure())
    return err;
  const int64_t T = s.T, N = s.N, I = s.I, H = s.H, G = 3 * H;
  rnn_jax_onednn::SetThreads();
  const Lengths valid(lengths, T, reverse);
  const int8_t* reset = resets.element_count() ? resets.typed_data() : nullptr;
  float* da_all = static_cast<float*>(rnn_jax_onednn::Slot(5, T * N * G * sizeof(float)));
  float* du_all = static_cast<float*>(rnn_jax_onednn::Slot(6, T * N * G * sizeof(float)));
  float* h_prev_all = static_cast<float*>(rnn_jax_onednn::Slot(7, T * N * H * sizeof(float)));
  const float* y_all = y.typed_data();
  // The state each step read, for w_hh's gradient (and the GRU's gates).
  StatesRead(T, N, H, reverse, h0.typed_data(), y_all, reset, h_prev_all);
  float* dh = dh0->typed_data();  // The running carry gradient, left at dh0.
  std::fill(dh, dh + N * H, 0.0f);
  const float* w_t = Transposed(w_hh.typed_data(), H, G, 8);  // w_hh^T [3H, H].
  const bool ok = ForEachSlice(N, [&](int64_t n0, int64_t n1) {
    const int64_t rows = n1 - n0;
    float* direct = static_cast<float*>(rnn_jax_onednn::Slot(4, rows * H * sizeof(float)));
    float* dh_rows = dh + n0 * H;
    for (int64_t step = T - 1; step >= 0; --step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const int64_t at = Row(T, t, n0);  // Row n0 of step t; its rows are T apart.
      for (int64_t n = 0; n < rows; ++n) {
        const int64_t row = at + n * T;
        if (t >= valid(n0 + n)) {  // Past the length: no gradient (the carry's stays zero).
          std::memset(da_all + row * G, 0, G * sizeof(float));
          std::memset(du_all + row * G, 0, G * sizeof(float));
          std::memset(direct + n * H, 0, H * sizeof(float));
          continue;
        }
        if (t == valid.Last(n0 + n))  // The final carry's cotangent enters here.
          for (int64_t j = 0; j < H; ++j)
            dh_rows[n * H + j] += dh_final.typed_data()[(n0 + n) * H + j];
        BackwardRow(H, acts.typed_data() + row * 4 * H, h_prev_all + row * H,
                    dy.typed_data() + row * H, dh_rows + n * H, da_all + row * G,
                    du_all + row * G, direct + n * H);
      }
      // dh_{t-1} = dh_t * z + du_t @ w_hh^T.
      std::memcpy(dh_rows, direct, rows * H * sizeof(float));
      if (!Gemm('N', 'N', rows, H, G, du_all + at * G, T * G, w_t, H, 1.0f, dh_rows, H))
        return false;
      if (reset)  // A reset row's step read zeros, not the previous carry.
        for (int64_t n = n0; n < n1; ++n)
          if (reset[t * N + n]) std::memset(dh + n * H, 0, H * sizeof(float));
    }
    for (int64_t n = n0; n < n1; ++n)  // An empty sequence's final carry is its initial one.
      if (valid.Last(n) < 0)
        std::memcpy(dh + n * H, dh_final.typed_data() + n * H, H * sizeof(float));
    return true;
  });
  if (!ok) return ffi::Error::Internal("dnnl_sgemm failed (recurrent gradient)");
  // Weight, bias and input gradients over all steps at once.
  if (!WeightAndInputGradients(T * N, I, H, G, h_prev_all, du_all, x.typed_data(), da_all,
                               Transposed(w_ih.typed_data(), I, G, 9), dw_hh->typed_data(),
                               dw_ih->typed_data(), dx->typed_data()))
    return ffi::Error::Internal("dnnl_sgemm failed (weight or input gradients)");
  ColumnSums(da_all, T * N, G, db_ih->typed_data());
  ColumnSums(du_all, T * N, G, db_hh->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxGruLoopForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // w_ih
                                  .Arg<F32>()  // w_hh
                                  .Arg<F32>()  // b_ih
                                  .Arg<F32>()  // b_hh
                                  .Arg<I8>()   // resets
                                  .Arg<I32>()  // lengths
                                  .Ret<F32>()  // y
                                  .Ret<F32>()  // h_final
                                  .Ret<F32>()  // acts
                                  .Attr<int32_t>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxGruLoopBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // w_ih
                                  .Arg<F32>()  // w_hh
                                  .Arg<F32>()  // b_ih
                                  .Arg<F32>()  // b_hh
                                  .Arg<I8>()   // resets
                                  .Arg<I32>()  // lengths
                                  .Arg<F32>()  // y
                                  .Arg<F32>()  // acts
                                  .Arg<F32>()  // dy
                                  .Arg<F32>()  // dh_final
                                  .Ret<F32>()  // dx
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>()  // dw_ih
                                  .Ret<F32>()  // dw_hh
                                  .Ret<F32>()  // db_ih
                                  .Ret<F32>()  // db_hh
                                  .Attr<int32_t>("reverse"));

#pragma GCC visibility pop
