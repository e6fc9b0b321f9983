// Adam's update of a kernel whose gradient is a sum of outer products, in one pass over it.
//
// Built on first use by factored_adam.py, which says why and how it is used. For each run b
// of a batch of runs, with the output rows' cotangent given as factors,
//   ct[b, 0, j] = ct0[b, j],  ct[b, r, j] = scale[b, r - 1] * rows[b, r - 1, j] (r >= 1),
// and g[j, i] = sum over r < live[b] of ct[b, r, j] * x[b, r, i]:
//   mu'  = b1 * mu + (1 - b1) * g
//   nu'  = b2 * nu + (1 - b2) * g * g
//   p'   = p - lr * (mu' / (1 - b1^t)) / (sqrt(nu' / (1 - b2^t)) + eps)
// which is optax.adam's update followed by optax.apply_updates, and, in the same pass, the
// layer's input gradient from the kernel before the update:
//   d_x[r, i] = sum over j of ct[b, r, j] * p[j, i] for r < live[b], 0 for the other rows,
// summed over each block of rows in order, then over the blocks in order (the same sums
// whichever thread runs a block). scalars[b] holds (-lr,
// 1 / (1 - b1^t), 1 / (1 - b2^t)): XLA computes the bias corrections as these reciprocals
// and multiplies by them. The multiply-adds are written as the fused multiply-adds XLA:CPU's
// LLVM makes of the same expressions, so that the update is optax's to the bit (with more
// than one row, as far as the compilers fuse the sum's terms alike). p, mu and nu are
// updated in place (their outputs alias them). The kernel's rows are split into blocks, run
// on XLA's intra-op threads and the calling thread.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlockRows = 4096;  // kernel rows per unit of work
constexpr int64_t kTileRows = 8;  // kernel rows whose input gradient terms are summed together

// One vector register of floats, and the operations the sums below need. (The compilers'
// portable vectors either leave fused multiply-adds out, as GCC's vector extensions do when
// contraction is off, or run them lane by lane, as libstdc++'s std::experimental::simd did.)
#if defined(__AVX512F__)
using Lanes = __m512;
constexpr int64_t kLanes = 16;
inline Lanes load(const float* from) { return _mm512_loadu_ps(from); }
inline void store(float* to, Lanes v) { _mm512_storeu_ps(to, v); }
inline Lanes broadcast(float a) { return _mm512_set1_ps(a); }
inline Lanes mul(Lanes a, Lanes b) { return _mm512_mul_ps(a, b); }
inline Lanes fma(Lanes a, Lanes b, Lanes c) { return _mm512_fmadd_ps(a, b, c); }
#elif defined(__AVX2__) && defined(__FMA__)
using Lanes = __m256;
constexpr int64_t kLanes = 8;
inline Lanes load(const float* from) { return _mm256_loadu_ps(from); }
inline void store(float* to, Lanes v) { _mm256_storeu_ps(to, v); }
inline Lanes broadcast(float a) { return _mm256_set1_ps(a); }
inline Lanes mul(Lanes a, Lanes b) { return _mm256_mul_ps(a, b); }
inline Lanes fma(Lanes a, Lanes b, Lanes c) { return _mm256_fmadd_ps(a, b, c); }
#else
using Lanes = float;
constexpr int64_t kLanes = 1;
inline Lanes load(const float* from) { return *from; }
inline void store(float* to, Lanes v) { *to = v; }
inline Lanes broadcast(float a) { return a; }
inline Lanes mul(Lanes a, Lanes b) { return a * b; }
inline Lanes fma(Lanes a, Lanes b, Lanes c) { return std::fma(a, b, c); }
#endif

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;
};

ffi::Error FactoredAdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> ct0,
                            ffi::Buffer<ffi::F32> ct_rows, ffi::Buffer<ffi::F32> ct_scale,
                            ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> live,
                            ffi::Buffer<ffi::F32> scalars, ffi::Buffer<ffi::F32> p,
                            ffi::Buffer<ffi::F32> mu, ffi::Buffer<ffi::F32> nu,
                            ffi::ResultBuffer<ffi::F32> p_out,
                            ffi::ResultBuffer<ffi::F32> mu_out,
                            ffi::ResultBuffer<ffi::F32> nu_out,
                            ffi::ResultBuffer<ffi::F32> d_x_out, float b1, float one_minus_b1,
                            float b2, float one_minus_b2, float eps) {
  const auto p_dims = p.dimensions();
  const auto x_dims = x.dimensions();
  if (p_dims.size() < 2 || x_dims.size() < 2) {
    return ffi::Error::InvalidArgument("factored_adam: p and x need at least 2 dimensions");
  }
  const int64_t m = p_dims[p_dims.size() - 2];
  const int64_t n = p_dims[p_dims.size() - 1];
  const int64_t k = x_dims[x_dims.size() - 2];
  const int64_t size = static_cast<int64_t>(p.element_count());
  const int64_t runs = m > 0 && n > 0 ? size / (m * n) : 0;
  if (k < 1 || static_cast<int64_t>(ct0.element_count()) != runs * m ||
      static_cast<int64_t>(ct_rows.element_count()) != runs * (k - 1) * m ||
      static_cast<int64_t>(ct_scale.element_count()) != runs * (k - 1) ||
      static_cast<int64_t>(x.element_count()) != runs * k * n ||
      static_cast<int64_t>(live.element_count()) != runs ||
      static_cast<int64_t>(scalars.element_count()) != runs * 3 ||
      static_cast<int64_t>(d_x_out->element_count()) != runs * k * n) {
    return ffi::Error::InvalidArgument("factored_adam: operand shapes do not match");
  }
  const int64_t blocks_per_run = (m + kBlockRows - 1) / kBlockRows;
  const int64_t total = runs * blocks_per_run;
  float* d_x = d_x_out->typed_data();
  std::fill(d_x, d_x + runs * k * n, 0.0f);
  if (total == 0) return ffi::Error::Success();
  // Each block's sums of the input gradient, added up in block order once all are done.
  std::unique_ptr<float[]> partial_sums(new float[total * k * n]);
  float* partials = partial_sums.get();
  const float* ct0_data = ct0.typed_data();
  const float* ct_rows_data = ct_rows.typed_data();
  const float* ct_scale_data = ct_scale.typed_data();
  const float* x_data = x.typed_data();
  const int32_t* live_data = live.typed_data();
  const float* scalar_data = scalars.typed_data();
  const float* p_in = p.typed_data();
  const float* mu_in = mu.typed_data();
  const float* nu_in = nu.typed_data();
  float* p_new = p_out->typed_data();
  float* mu_new = mu_out->typed_data();
  float* nu_new = nu_out->typed_data();

  // With several gradient rows, the kernel's rows are handled in tiles of kTileRows, copied
  // (before the update) into rows padded with zeros to a whole number of kLanes floats. For
  // each kLanes-wide column of a tile, the tile's rows stay in registers while the input
  // gradient's row sums and the gradient's sums over the rows run over them. With one row,
  // its gradient and its input gradient terms are computed in the update's own loop.
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  auto update_block = [=](int64_t unit) {
    const int64_t b = unit / blocks_per_run;
    const int64_t j_begin = (unit % blocks_per_run) * kBlockRows;
    const int64_t j_end = std::min(m, j_begin + kBlockRows);
    const int64_t rows = std::min<int64_t>(k, std::max<int32_t>(live_data[b], 0));
    const float neg_lr = scalar_data[3 * b];
    const float mu_scale = scalar_data[3 * b + 1];
    const float nu_scale = scalar_data[3 * b + 2];
    const float* c0 = ct0_data + b * m;
    const float* c_rows = ct_rows_data + b * (k - 1) * m;
    const float* c_scale = ct_scale_data + b * (k - 1);
    // x's rows, the block's input gradient sums, a tile's kernel rows and their gradients,
    // each row padded, and the tile's rows of ct; zeros to start with.
    std::unique_ptr<float[]> scratch(
        new float[(2 * rows + 2 * kTileRows) * padded + rows * kTileRows]());
    float* xs = scratch.get();
    float* d = xs + rows * padded;
    float* tile = d + rows * padded;
    float* g = tile + kTileRows * padded;
    float* cs = g + kTileRows * padded;  // cs[r * kTileRows + t] = ct[r, j0 + t]
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(x_data + (b * k + r) * n, x_data + (b * k + r + 1) * n, xs + r * padded);
    }
    // Adam's update of entry `at` + i, whose value before it is w and gradient gi.
    auto update = [&](int64_t at, int64_t i, float gi, float w) {
      const float m1 = std::fma(mu_in[at + i], b1, gi * one_minus_b1);
      const float v1 = std::fma(nu_in[at + i], b2, (gi * gi) * one_minus_b2);
      const float step = (m1 * mu_scale) / (std::sqrt(v1 * nu_scale) + eps);
      p_new[at + i] = std::fma(neg_lr, step, w);
      mu_new[at + i] = m1;
      nu_new[at + i] = v1;
    };
    if (rows == 1) {
      for (int64_t j = j_begin; j < j_end; ++j) {
        const int64_t at = (b * m + j) * n;
        const float c = c0[j];
#pragma GCC ivdep
        for (int64_t i = 0; i < n; ++i) {
          const float w = p_in[at + i];
          d[i] = std::fma(c, w, d[i]);
          update(at, i, c * xs[i], w);
        }
      }
    }
    for (int64_t j0 = j_begin; j0 < j_end && rows != 1; j0 += kTileRows) {
      const int64_t tile_rows = std::min(kTileRows, j_end - j0);
      for (int64_t t = 0; t < tile_rows; ++t) {  // before the update overwrites p (in place)
        std::copy(p_in + (b * m + j0 + t) * n, p_in + (b * m + j0 + t + 1) * n,
                  tile + t * padded);
        if (rows > 0) cs[t] = c0[j0 + t];
        for (int64_t r = 1; r < rows; ++r) {
          cs[r * kTileRows + t] = c_scale[r - 1] * c_rows[(r - 1) * m + j0 + t];
        }
      }
      for (int64_t i0 = 0; i0 < padded && rows > 0; i0 += kLanes) {
        Lanes w[kTileRows];
        for (int64_t t = 0; t < tile_rows; ++t) w[t] = load(tile + t * padded + i0);
        for (int64_t r = 0; r < rows; ++r) {  // d[r] += sum over the tile's rows t of c[r, t] w[t]
          const float* cr = cs + r * kTileRows;
          Lanes sum = load(d + r * padded + i0);
          for (int64_t t = 0; t < tile_rows; ++t) sum = fma(broadcast(cr[t]), w[t], sum);
          store(d + r * padded + i0, sum);
        }
        for (int64_t t = 0; t < tile_rows; ++t) {
          // XLA's sum of products: fma(c0, x0, c1 * x1), then fma(cr, xr, sum)
          Lanes sum = fma(broadcast(cs[t]), load(xs + i0),
                          mul(broadcast(cs[kTileRows + t]), load(xs + padded + i0)));
          for (int64_t r = 2; r < rows; ++r) {
            sum = fma(broadcast(cs[r * kTileRows + t]), load(xs + r * padded + i0), sum);
          }
          store(g + t * padded + i0, sum);
        }
      }
      for (int64_t t = 0; t < tile_rows; ++t) {
        const int64_t at = (b * m + j0 + t) * n;
        const float* gt = g + t * padded;
        const float* wt = tile + t * padded;
#pragma GCC ivdep
        for (int64_t i = 0; i < n; ++i) update(at, i, gt[i], wt[i]);
      }
    }
    float* partial = partials + unit * k * n;
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(d + r * padded, d + r * padded + n, partial + r * n);
    }
  };

  // Work stealing over blocks: helpers that start late find none left, and the caller never
  // waits for a helper to start, only for blocks in progress to finish.
  auto progress = std::make_shared<Progress>();
  auto drain = [progress, update_block, total]() {
    for (int64_t unit; (unit = progress->next.fetch_add(1)) < total;) {
      update_block(unit);
      if (progress->done.fetch_add(1) + 1 == total) {
        std::lock_guard<std::mutex> lock(progress->mutex);
        progress->all_done.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = drain;
    pool.Schedule(std::move(task));
  }
  drain();
  std::unique_lock<std::mutex> lock(progress->mutex);
  progress->all_done.wait(lock, [&] { return progress->done.load() == total; });
  for (int64_t unit = 0; unit < total; ++unit) {
    const int64_t b = unit / blocks_per_run;
    const int64_t rows = std::min<int64_t>(k, std::max<int32_t>(live_data[b], 0));
    const float* d = partials + unit * k * n;
    float* out = d_x + b * k * n;
    for (int64_t i = 0; i < rows * n; ++i) out[i] += d[i];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FactoredAdam, FactoredAdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct0 [..., m]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rows [..., k - 1, m]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale [..., k - 1]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., k, n]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // live [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scalars [..., 3]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p [..., m, n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mu
                                  .Arg<ffi::Buffer<ffi::F32>>()  // nu
                                  .Ret<ffi::Buffer<ffi::F32>>()  // p'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mu'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nu'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_x [..., k, n]
                                  .Attr<float>("b1")
                                  .Attr<float>("one_minus_b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("one_minus_b2")
                                  .Attr<float>("eps"));
