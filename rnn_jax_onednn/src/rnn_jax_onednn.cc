// rnn_jax_onednn: XLA FFI handlers that run a whole LSTM/GRU sequence with oneDNN.
//
// Why: on CPU, XLA runs the small per-step matmul of a `lax.scan` slowly; oneDNN's
// RNN primitives take the whole sequence at once (as PyTorch's CPU nn.LSTM does).
// rnn_jax/onednn.py calls these handlers through jax.ffi.ffi_call, inside a
// jax.custom_vjp: the forward-training handler writes oneDNN's workspace as an extra
// uint8 output, which the backward handler reads.
//
// Layouts (row-major; L = D = 1, one layer and one direction):
//   x   [T, N, I]  (oneDNN tnc)         h0, c0, hT, cT  [N, H]  (ldnc)
//   wl  [I, G, H]  (ldigo)               wi  [H, G, H]  (ldigo)    bias [Gb, H] (ldgo)
//   y   [T, N, H]  (tnc, in input time order also for reverse = right2left)
// G = 4 (LSTM: i, f, g, o) or 3 (GRU: u, r, o); Gb = 4 for LSTM and lbr_gru (u, r, o, u'),
// 3 for vanilla_gru. GRU calls take c0 of any shape (unused) and return cT unchanged.
// The weights are reordered each call into the formats the primitive chose
// (format_tag::any), as PyTorch does; primitives are cached per shape and kind.
//
// Plain-C helpers for ctypes: rnn_jax_onednn_workspace_size (bytes of the workspace
// for a shape), rnn_jax_onednn_set_num_threads / _get_num_threads (the OpenMP threads
// oneDNN uses inside a handler), rnn_jax_onednn_last_error.

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;


namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

enum Kind : int32_t { kLstm = 0, kLbrGru = 1, kGru = 2 };

struct Key {
  int32_t kind, reverse, training;
  int64_t T, N, I, H;
  bool operator<(const Key& o) const {
    return std::tie(kind, reverse, training, T, N, I, H) <
           std::tie(o.kind, o.reverse, o.training, o.T, o.N, o.I, o.H);
  }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A reorder from the user's ldigo weights to the primitive's format (or back); empty
// when the formats agree and the user's buffer is used as is.
struct Reorder {
  memory::desc from, to;
  dnnl::primitive prim;
  bool needed = false;
  void Run(dnnl::stream& stream, const memory& src, const memory& dst) const {
    prim.execute(stream, {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}});
  }
};

Reorder MakeReorder(const memory::desc& from, const memory::desc& to) {
  Reorder r{from, to, {}, from != to};
  if (r.needed) r.prim = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
  return r;
}

// Everything a call needs for one (kind, direction, shape, training) key.
struct Primitives {
  memory::desc src, iter, wl_user, wi_user, bias, dst;
  dnnl::primitive fwd;
  memory::desc fwd_scratch, workspace;
  Reorder fwd_wl, fwd_wi;
  // Training only:
  dnnl::primitive bwd;
  memory::desc bwd_scratch;
  Reorder bwd_wl, bwd_wi, bwd_dwl, bwd_dwi;  // user -> bwd weights; bwd diff -> user.
};

std::unique_ptr<Primitives> Build(const Key& k) {
  auto p = std::make_unique<Primitives>();
  const int64_t gates = k.kind == kLstm ? 4 : 3;
  const int64_t bias_gates = k.kind == kGru ? 3 : 4;
  p->src = memory::desc({k.T, k.N, k.I}, Dt::f32, Tag::tnc);
  p->dst = memory::desc({k.T, k.N, k.H}, Dt::f32, Tag::tnc);
  p->iter = memory::desc({1, 1, k.N, k.H}, Dt::f32, Tag::ldnc);
  p->wl_user = memory::desc({1, 1, k.I, gates, k.H}, Dt::f32, Tag::ldigo);
  p->wi_user = memory::desc({1, 1, k.H, gates, k.H}, Dt::f32, Tag::ldigo);
  p->bias = memory::desc({1, 1, bias_gates, k.H}, Dt::f32, Tag::ldgo);
  const memory::desc wl_any({1, 1, k.I, gates, k.H}, Dt::f32, Tag::any);
  const memory::desc wi_any({1, 1, k.H, gates, k.H}, Dt::f32, Tag::any);
  const auto dir = k.reverse ? dnnl::rnn_direction::unidirectional_right2left
                             : dnnl::rnn_direction::unidirectional_left2right;
  const auto prop = k.training ? dnnl::prop_kind::forward_training
                               : dnnl::prop_kind::forward_inference;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto& e = Engine();
  const auto& s = p->src;
  const auto& it = p->iter;
  const auto& b = p->bias;
  const auto& d = p->dst;

  // The forward (and, when training, backward) primitive descriptors of each kind.
  dnnl::primitive_desc fwd, bwd;
  if (k.kind == kLstm) {
    dnnl::lstm_forward::primitive_desc f(e, prop, dir, s, it, it, wl_any, wi_any, b, d, it, it,
                                         attr);
    fwd = f;
    if (k.training)
      bwd = dnnl::lstm_backward::primitive_desc(e, dnnl::prop_kind::backward, dir, s, it, it,
                                                wl_any, wi_any, b, d, it, it, s, it, it, wl_any,
                                                wi_any, b, d, it, it, f, attr);
  } else if (k.kind == kLbrGru) {
    dnnl::lbr_gru_forward::primitive_desc f(e, prop, dir, s, it, wl_any, wi_any, b, d, it, attr);
    fwd = f;
    if (k.training)
      bwd = dnnl::lbr_gru_backward::primitive_desc(e, dnnl::prop_kind::backward, dir, s, it,
                                                   wl_any, wi_any, b, d, it, s, it, wl_any,
                                                   wi_any, b, d, it, f, attr);
  } else {
    dnnl::gru_forward::primitive_desc f(e, prop, dir, s, it, wl_any, wi_any, b, d, it, attr);
    fwd = f;
    if (k.training)
      bwd = dnnl::gru_backward::primitive_desc(e, dnnl::prop_kind::backward, dir, s, it, wl_any,
                                               wi_any, b, d, it, s, it, wl_any, wi_any, b, d, it,
                                               f, attr);
  }
  p->fwd = dnnl::primitive(fwd);
  p->fwd_scratch = fwd.scratchpad_desc();
  p->workspace = fwd.workspace_desc();
  p->fwd_wl = MakeReorder(p->wl_user, fwd.weights_desc(0));
  p->fwd_wi = MakeReorder(p->wi_user, fwd.weights_desc(1));
  if (k.training) {
    p->bwd = dnnl::primitive(bwd);
    p->bwd_scratch = bwd.scratchpad_desc();
    p->bwd_wl = MakeReorder(p->wl_user, bwd.weights_desc(0));
    p->bwd_wi = MakeReorder(p->wi_user, bwd.weights_desc(1));
    p->bwd_dwl = MakeReorder(bwd.diff_weights_desc(0), p->wl_user);
    p->bwd_dwi = MakeReorder(bwd.diff_weights_desc(1), p->wi_user);
  }
  return p;
}

// The cached primitives of a key (built on first use; never evicted).
const Primitives& Get(const Key& k) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[k];
  if (!slot) slot = Build(k);
  return *slot;
}

using rnn_jax_onednn::SetThreads;
using rnn_jax_onednn::Slot;

memory Mem(const memory::desc& md, const void* data) {
  return memory(md, Engine(), const_cast<void*>(data));
}

// The user's weights in the format `r` wants: the buffer itself, or a reordered copy.
memory WeightsFor(dnnl::stream& stream, const Reorder& r, const memory& user, int slot) {
  if (!r.needed) return user;
  memory out(r.to, Engine(), Slot(slot, r.to.get_size()));
  r.Run(stream, user, out);
  return out;
}

using F32 = ffi::Buffer<ffi::F32>;
using RetF32 = ffi::ResultBuffer<ffi::F32>;

ffi::Error CheckShapes(const F32& x, const F32& h0, const F32& wl, const F32& wi, const F32& b,
                       int32_t kind, Key* key) {
  auto xd = x.dimensions();
  auto hd = h0.dimensions();
  if (kind < kLstm || kind > kGru) return ffi::Error::InvalidArgument("kind must be 0, 1 or 2");
  if (xd.size() != 3 || hd.size() != 2 || hd[0] != xd[1])
    return ffi::Error::InvalidArgument("expected x [T, N, I] and h0 [N, H]");
  key->T = xd[0];
  key->N = xd[1];
  key->I = xd[2];
  key->H = hd[1];
  const int64_t gates = kind == kLstm ? 4 : 3, bias_gates = kind == kGru ? 3 : 4;
  if (wl.element_count() != size_t(key->I * gates * key->H) ||
      wi.element_count() != size_t(key->H * gates * key->H) ||
      b.element_count() != size_t(bias_gates * key->H))
    return ffi::Error::InvalidArgument("weights or bias of the wrong size");
  return ffi::Error::Success();
}

ffi::Error Forward(F32 x, F32 h0, F32 c0, F32 wl, F32 wi, F32 b, RetF32 y, RetF32 hT, RetF32 cT,
                   ffi::ResultBuffer<ffi::U8> workspace, int32_t kind, int32_t reverse,
                   int32_t training) {
  Key key{kind, reverse != 0, training != 0};
  if (auto err = CheckShapes(x, h0, wl, wi, b, kind, &key); err.failure()) return err;
  try {
    SetThreads();
    const Primitives& p = Get(key);
    if (training && workspace->size_bytes() != p.workspace.get_size())
      return ffi::Error::InvalidArgument("workspace output of the wrong size");
    dnnl::stream stream(Engine());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC_LAYER, Mem(p.src, x.untyped_data())},
        {DNNL_ARG_SRC_ITER, Mem(p.iter, h0.untyped_data())},
        {DNNL_ARG_WEIGHTS_LAYER, WeightsFor(stream, p.fwd_wl, Mem(p.wl_user, wl.untyped_data()), 0)},
        {DNNL_ARG_WEIGHTS_ITER, WeightsFor(stream, p.fwd_wi, Mem(p.wi_user, wi.untyped_data()), 1)},
        {DNNL_ARG_BIAS, Mem(p.bias, b.untyped_data())},
        {DNNL_ARG_DST_LAYER, Mem(p.dst, y->untyped_data())},
        {DNNL_ARG_DST_ITER, Mem(p.iter, hT->untyped_data())},
        {DNNL_ARG_SCRATCHPAD, memory(p.fwd_scratch, Engine(), Slot(2, p.fwd_scratch.get_size()))},
    };
    if (kind == kLstm) {
      args[DNNL_ARG_SRC_ITER_C] = Mem(p.iter, c0.untyped_data());
      args[DNNL_ARG_DST_ITER_C] = Mem(p.iter, cT->untyped_data());
    }
    if (training) args[DNNL_ARG_WORKSPACE] = Mem(p.workspace, workspace->untyped_data());
    p.fwd.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN forward: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Backward(F32 x, F32 h0, F32 c0, F32 wl, F32 wi, F32 b, F32 y, F32 hT, F32 cT,
                    ffi::Buffer<ffi::U8> workspace, F32 dy, F32 dhT, F32 dcT, RetF32 dx,
                    RetF32 dh0, RetF32 dc0, RetF32 dwl, RetF32 dwi, RetF32 db, int32_t kind,
                    int32_t reverse) {
  Key key{kind, reverse != 0, 1};
  if (auto err = CheckShapes(x, h0, wl, wi, b, kind, &key); err.failure()) return err;
  try {
    SetThreads();
    const Primitives& p = Get(key);
    if (workspace.size_bytes() != p.workspace.get_size())
      return ffi::Error::InvalidArgument("workspace input of the wrong size");
    dnnl::stream stream(Engine());
    // oneDNN accumulates into the weight and bias gradients: start them at zero (in the
    // primitive's diff format, reordered into the user's ldigo afterwards if it differs).
    memory dwl_user = Mem(p.wl_user, dwl->untyped_data());
    memory dwi_user = Mem(p.wi_user, dwi->untyped_data());
    auto zeroed = [&](const Reorder& to_user, const memory& user, int slot) {
      if (!to_user.needed) {
        std::memset(user.get_data_handle(), 0, to_user.to.get_size());
        return user;
      }
      void* buf = Slot(slot, to_user.from.get_size());
      std::memset(buf, 0, to_user.from.get_size());
      return memory(to_user.from, Engine(), buf);
    };
    memory dwl_prim = zeroed(p.bwd_dwl, dwl_user, 2);
    memory dwi_prim = zeroed(p.bwd_dwi, dwi_user, 3);
    std::memset(db->untyped_data(), 0, db->size_bytes());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC_LAYER, Mem(p.src, x.untyped_data())},
        {DNNL_ARG_SRC_ITER, Mem(p.iter, h0.untyped_data())},
        {DNNL_ARG_WEIGHTS_LAYER, WeightsFor(stream, p.bwd_wl, Mem(p.wl_user, wl.untyped_data()), 0)},
        {DNNL_ARG_WEIGHTS_ITER, WeightsFor(stream, p.bwd_wi, Mem(p.wi_user, wi.untyped_data()), 1)},
        {DNNL_ARG_BIAS, Mem(p.bias, b.untyped_data())},
        {DNNL_ARG_DST_LAYER, Mem(p.dst, y.untyped_data())},
        {DNNL_ARG_DST_ITER, Mem(p.iter, hT.untyped_data())},
        {DNNL_ARG_WORKSPACE, Mem(p.workspace, workspace.untyped_data())},
        {DNNL_ARG_DIFF_DST_LAYER, Mem(p.dst, dy.untyped_data())},
        {DNNL_ARG_DIFF_DST_ITER, Mem(p.iter, dhT.untyped_data())},
        {DNNL_ARG_DIFF_SRC_LAYER, Mem(p.src, dx->untyped_data())},
        {DNNL_ARG_DIFF_SRC_ITER, Mem(p.iter, dh0->untyped_data())},
        {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwl_prim},
        {DNNL_ARG_DIFF_WEIGHTS_ITER, dwi_prim},
        {DNNL_ARG_DIFF_BIAS, Mem(p.bias, db->untyped_data())},
        {DNNL_ARG_SCRATCHPAD, memory(p.bwd_scratch, Engine(), Slot(4, p.bwd_scratch.get_size()))},
    };
    if (kind == kLstm) {
      args[DNNL_ARG_SRC_ITER_C] = Mem(p.iter, c0.untyped_data());
      args[DNNL_ARG_DST_ITER_C] = Mem(p.iter, cT.untyped_data());
      args[DNNL_ARG_DIFF_DST_ITER_C] = Mem(p.iter, dcT.untyped_data());
      args[DNNL_ARG_DIFF_SRC_ITER_C] = Mem(p.iter, dc0->untyped_data());
    }
    p.bwd.execute(stream, args);
    if (p.bwd_dwl.needed) p.bwd_dwl.Run(stream, dwl_prim, dwl_user);
    if (p.bwd_dwi.needed) p.bwd_dwi.Run(stream, dwi_prim, dwi_user);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN backward: ") + e.what());
  }
  return ffi::Error::Success();
}

thread_local std::string g_last_error;

}  // namespace

// The library is built with hidden visibility; what follows is exported.
#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxOnednnForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // wl
                                  .Arg<F32>()  // wi
                                  .Arg<F32>()  // bias
                                  .Ret<F32>()  // y
                                  .Ret<F32>()  // hT
                                  .Ret<F32>()  // cT
                                  .Ret<ffi::Buffer<ffi::U8>>()  // workspace
                                  .Attr<int32_t>("kind")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("training"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxOnednnBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // wl
                                  .Arg<F32>()  // wi
                                  .Arg<F32>()  // bias
                                  .Arg<F32>()  // y
                                  .Arg<F32>()  // hT
                                  .Arg<F32>()  // cT
                                  .Arg<ffi::Buffer<ffi::U8>>()  // workspace
                                  .Arg<F32>()  // dy
                                  .Arg<F32>()  // dhT
                                  .Arg<F32>()  // dcT
                                  .Ret<F32>()  // dx
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>()  // dc0
                                  .Ret<F32>()  // dwl
                                  .Ret<F32>()  // dwi
                                  .Ret<F32>()  // dbias
                                  .Attr<int32_t>("kind")
                                  .Attr<int32_t>("reverse"));

extern "C" {

// Bytes of the forward-training workspace for this kind/direction/shape, or -1 on error
// (then see rnn_jax_onednn_last_error).
int64_t rnn_jax_onednn_workspace_size(int32_t kind, int32_t reverse, int64_t T, int64_t N,
                                      int64_t I, int64_t H) {
  try {
    return int64_t(Get(Key{kind, reverse != 0, 1, T, N, I, H}).workspace.get_size());
  } catch (const dnnl::error& e) {
    g_last_error = e.what();
    return -1;
  }
}

const char* rnn_jax_onednn_last_error() { return g_last_error.c_str(); }

// OpenMP threads for oneDNN inside the handlers; n <= 0 restores OpenMP's default.
void rnn_jax_onednn_set_num_threads(int n) {
  rnn_jax_onednn::g_num_threads.store(n > 0 ? n : 0);
}

int rnn_jax_onednn_get_num_threads() {
  const int n = rnn_jax_onednn::g_num_threads.load();
  return n > 0 ? n : omp_get_max_threads();
}

}  // extern "C"

#pragma GCC visibility pop
