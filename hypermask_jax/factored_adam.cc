// Adam's update of a kernel whose gradient is a sum of outer products, in one pass over it.
//
// Built on first use by factored_adam.py, which says why and how it is used. For each run b
// of a batch of runs, with g[j, i] = sum over r < live[b] of ct[b, r, j] * x[b, r, i]:
//   mu'  = b1 * mu + (1 - b1) * g
//   nu'  = b2 * nu + (1 - b2) * g * g
//   p'   = p - lr * (mu' / (1 - b1^t)) / (sqrt(nu' / (1 - b2^t)) + eps)
// which is optax.adam's update followed by optax.apply_updates. scalars[b] holds (-lr,
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

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlockRows = 4096;  // kernel rows per unit of work

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;
};

ffi::Error FactoredAdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> ct,
                            ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> live,
                            ffi::Buffer<ffi::F32> scalars, ffi::Buffer<ffi::F32> p,
                            ffi::Buffer<ffi::F32> mu, ffi::Buffer<ffi::F32> nu,
                            ffi::ResultBuffer<ffi::F32> p_out,
                            ffi::ResultBuffer<ffi::F32> mu_out,
                            ffi::ResultBuffer<ffi::F32> nu_out, float b1, float one_minus_b1,
                            float b2, float one_minus_b2, float eps) {
  const auto p_dims = p.dimensions();
  const auto ct_dims = ct.dimensions();
  if (p_dims.size() < 2 || ct_dims.size() < 2) {
    return ffi::Error::InvalidArgument("factored_adam: p and ct need at least 2 dimensions");
  }
  const int64_t m = p_dims[p_dims.size() - 2];
  const int64_t n = p_dims[p_dims.size() - 1];
  const int64_t k = ct_dims[ct_dims.size() - 2];
  const int64_t size = static_cast<int64_t>(p.element_count());
  const int64_t runs = m > 0 && n > 0 ? size / (m * n) : 0;
  if (static_cast<int64_t>(ct.element_count()) != runs * k * m ||
      static_cast<int64_t>(x.element_count()) != runs * k * n ||
      static_cast<int64_t>(live.element_count()) != runs ||
      static_cast<int64_t>(scalars.element_count()) != runs * 3) {
    return ffi::Error::InvalidArgument("factored_adam: operand shapes do not match");
  }
  const int64_t blocks_per_run = (m + kBlockRows - 1) / kBlockRows;
  const int64_t total = runs * blocks_per_run;
  if (total == 0) return ffi::Error::Success();
  const float* ct_data = ct.typed_data();
  const float* x_data = x.typed_data();
  const int32_t* live_data = live.typed_data();
  const float* scalar_data = scalars.typed_data();
  const float* p_in = p.typed_data();
  const float* mu_in = mu.typed_data();
  const float* nu_in = nu.typed_data();
  float* p_new = p_out->typed_data();
  float* mu_new = mu_out->typed_data();
  float* nu_new = nu_out->typed_data();

  auto update_block = [=](int64_t unit) {
    const int64_t b = unit / blocks_per_run;
    const int64_t j_begin = (unit % blocks_per_run) * kBlockRows;
    const int64_t j_end = std::min(m, j_begin + kBlockRows);
    const int64_t rows = std::min<int64_t>(k, std::max<int32_t>(live_data[b], 0));
    const float neg_lr = scalar_data[3 * b];
    const float mu_scale = scalar_data[3 * b + 1];
    const float nu_scale = scalar_data[3 * b + 2];
    const float* c = ct_data + b * k * m;
    const float* xs = x_data + b * k * n;
    std::unique_ptr<float[]> g(new float[n]);
    for (int64_t j = j_begin; j < j_end; ++j) {
      const int64_t at = (b * m + j) * n;
      if (rows == 0) {
        std::fill(g.get(), g.get() + n, 0.0f);
      } else {  // XLA's sum of products: fma(c0, x0, c1 * x1), then fma(cr, xr, sum)
        const float c0 = c[j];
        if (rows == 1) {
          for (int64_t i = 0; i < n; ++i) g[i] = c0 * xs[i];
        } else {
          const float c1 = c[m + j];
          for (int64_t i = 0; i < n; ++i) g[i] = std::fma(c0, xs[i], c1 * xs[n + i]);
        }
        for (int64_t r = 2; r < rows; ++r) {
          const float cr = c[r * m + j];
          const float* xr = xs + r * n;
          for (int64_t i = 0; i < n; ++i) g[i] = std::fma(cr, xr[i], g[i]);
        }
      }
#pragma GCC ivdep
      for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i];
        const float m1 = std::fma(mu_in[at + i], b1, gi * one_minus_b1);
        const float v1 = std::fma(nu_in[at + i], b2, (gi * gi) * one_minus_b2);
        const float step = (m1 * mu_scale) / (std::sqrt(v1 * nu_scale) + eps);
        p_new[at + i] = std::fma(neg_lr, step, p_in[at + i]);
        mu_new[at + i] = m1;
        nu_new[at + i] = v1;
      }
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
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FactoredAdam, FactoredAdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct [..., k, m]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., k, n]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // live [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scalars [..., 3]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p [..., m, n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mu
                                  .Arg<ffi::Buffer<ffi::F32>>()  // nu
                                  .Ret<ffi::Buffer<ffi::F32>>()  // p'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mu'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nu'
                                  .Attr<float>("b1")
                                  .Attr<float>("one_minus_b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("one_minus_b2")
                                  .Attr<float>("eps"));
