// XLA FFI kernels for XLA:CPU, built on first use by cpu_kernels.py into one library.
//
// FactoredAdam: Adam's update of a kernel whose gradient is a sum of outer products, in one
// pass over it (factored_adam.py says why and how it is used). For each run b
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
// updated in place (their outputs alias them).
//
// ChunkDense: the chunked hypernetwork's output layer y = x @ kernel + bias (hypernet.py;
// kernel [n, m], x [rows, n], m much larger than n and rows),
//   y[r, j] = (sum over i in order of x[r, i] * kernel[i, j], fused multiply-adds) + bias[j]
// written straight into pieces: y read row after row as one flat vector, cut into consecutive
// pieces (the target network's tensors), the entries past the last piece left out. Each block
// of kernel columns is read from memory once for all rows.
//
// ChunkDenseBackward: its backward pass, in one pass over the kernel and the cotangent
// ct [rows, m] (given whole, or as the pieces ChunkDense writes, zeros past the last):
//   d_kernel[i, j] = sum over r of x[r, i] * ct[r, j]   (r in order, fused multiply-adds)
//   d_x[r, i]      = sum over j of ct[r, j] * kernel[i, j]
//   d_bias[j]      = sum over r of ct[r, j]            (r in order)
// d_x summed over each block of columns (a vector's lanes, then the lanes in order), then
// over the blocks in order, as FactoredAdam's.
//
// DenseAdam: FactoredAdam's update for a parameter whose gradient g is an array (any shape,
// the runs of a batch laid end to end), in place, one pass.
//
// Conv3x3: the 3x3 convolution of stride 1 (layers.kernel_conv3x3), x [N, H, W, C] padded by
// `padding` zeros on each side, kernel [3, 3, C, F]:
//   out[n, h, w, f] = sum over i, j < 3 and c of x_padded[n, h + i, w + j, c] * kernel[i, j, c, f]
// summed in the order (i, j, c), in registers, for tiles of 8 positions of a row and one or
// two vectors of features; one image per unit of work. (The input's gradient is this
// convolution of the output gradient with the kernel flipped and transposed.)
//
// Conv3x3KernelGrad: the kernel's gradient,
//   d_kernel[i, j, c, f] = sum over n, h, w of x_padded[n, h + i, w + j, c] * ct[n, h, w, f]
// summed over each image's positions in order (8 channels and one or two vectors of features
// in registers), over the images of each of G fixed groups in order, then over the groups in
// order: the same sums whichever thread runs a group.
//
// WideRows: the full hypernetwork's output product (wide_dense.py) for R rows x [R, n] and
// a kernel [m, n] of many rows (m in the millions, n in the tens or hundreds):
//   y[r, j] = sum over i of x[r, i] * kernel[j, i]
// each summed in vector lanes over i in order (the last vector's lanes past n zero), then
// over the lanes in a fixed tree (SumLanes8), in tiles of 8 kernel rows copied into whole,
// aligned vectors, for one row of x at a time.
//
// All split the work into blocks, run on XLA's intra-op threads and the calling thread.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlockRows = 4096;  // kernel rows per unit of work
constexpr int64_t kTileRows = 8;  // kernel rows whose input gradient terms are summed together
constexpr int64_t kPrefetchTiles = 2;  // WideRows: tiles ahead of the one in use, prefetched
constexpr int64_t kBlockColumns = 1024;  // ChunkDenseBackward: kernel columns per unit of work
constexpr int64_t kGroupRows = 8;  // ChunkDenseBackward: most cotangent rows per pass
constexpr int kPairRows = 2;  // ChunkDenseBackward: kernel rows per pass
constexpr int kForwardRows = 6;  // ChunkDense: rows of x per pass (12 sums in registers)
constexpr int64_t kDenseBlock = 16384;  // DenseAdam: entries per unit of work
constexpr int64_t kConvTile = 8;  // Conv3x3: output positions per tile
constexpr int kGradChannels = 8;  // Conv3x3KernelGrad: input channels per tile

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
inline Lanes add(Lanes a, Lanes b) { return _mm512_add_ps(a, b); }
inline Lanes fma(Lanes a, Lanes b, Lanes c) { return _mm512_fmadd_ps(a, b, c); }
inline Lanes zero() { return _mm512_setzero_ps(); }
#elif defined(__AVX2__) && defined(__FMA__)
using Lanes = __m256;
constexpr int64_t kLanes = 8;
inline Lanes load(const float* from) { return _mm256_loadu_ps(from); }
inline void store(float* to, Lanes v) { _mm256_storeu_ps(to, v); }
inline Lanes broadcast(float a) { return _mm256_set1_ps(a); }
inline Lanes mul(Lanes a, Lanes b) { return _mm256_mul_ps(a, b); }
inline Lanes add(Lanes a, Lanes b) { return _mm256_add_ps(a, b); }
inline Lanes fma(Lanes a, Lanes b, Lanes c) { return _mm256_fmadd_ps(a, b, c); }
inline Lanes zero() { return _mm256_setzero_ps(); }
#else
using Lanes = float;
constexpr int64_t kLanes = 1;
inline Lanes load(const float* from) { return *from; }
inline void store(float* to, Lanes v) { *to = v; }
inline Lanes broadcast(float a) { return a; }
inline Lanes mul(Lanes a, Lanes b) { return a * b; }
inline Lanes add(Lanes a, Lanes b) { return a + b; }
inline Lanes fma(Lanes a, Lanes b, Lanes c) { return std::fma(a, b, c); }
inline Lanes zero() { return 0.0f; }
#endif

// Makes the compiler hold v in a register from here on, where it would rather load it from
// memory again at each use.
inline void keep_in_register(Lanes& v) {
#if defined(__x86_64__)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

// The lanes' sum, in lane order.
inline float sum_lanes(Lanes v) {
  float lanes[kLanes];
  store(lanes, v);
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// The lane sums of 8 vectors, out[t] = the sum of v[t]'s lanes, in a fixed tree: AVX-512's
// halves added first, then (AVX2) pairs of lanes, pairs of pairs, and the two 128-bit halves.
inline void SumLanes8(const Lanes v[8], float out[8]) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  __m256 h[8];
  for (int t = 0; t < 8; ++t) {
#if defined(__AVX512F__)
    // Through memory: GCC 12's 512-to-256-bit extracts warn of an uninitialised value.
    float lanes[16];
    store(lanes, v[t]);
    h[t] = _mm256_add_ps(_mm256_loadu_ps(lanes), _mm256_loadu_ps(lanes + 8));
#else
    h[t] = v[t];
#endif
  }
  const __m256 q0 = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 q1 = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20),
                                      _mm256_permute2f128_ps(q0, q1, 0x31)));
#else
  for (int t = 0; t < 8; ++t) out[t] = v[t];
#endif
}

// Adam's update of one entry (FactoredAdam's and DenseAdam's): optax's expressions in XLA's
// order, with the multiply-adds XLA:CPU's LLVM fuses. Which product of a moment's sum it fuses
// depends on the gradient's form: a product formed in the same loop (FactoredAdam's one row)
// or an array read from memory (DenseAdam's): the template argument.
struct AdamUpdate {
  const float* mu_in;
  const float* nu_in;
  float* p_new;
  float* mu_new;
  float* nu_new;
  float b1, one_minus_b1, b2, one_minus_b2, eps;
  float neg_lr, mu_scale, nu_scale;  // one run's scalars

  // Entry `at`, whose value before the update is w and gradient g.
  template <bool kGradientInMemory>
  void apply(int64_t at, float g, float w) const {
    const float m1 = kGradientInMemory ? std::fma(g, one_minus_b1, mu_in[at] * b1)
                                       : std::fma(mu_in[at], b1, g * one_minus_b1);
    const float v1 = kGradientInMemory ? std::fma(g * g, one_minus_b2, nu_in[at] * b2)
                                       : std::fma(nu_in[at], b2, (g * g) * one_minus_b2);
    const float step = (m1 * mu_scale) / (std::sqrt(v1 * nu_scale) + eps);
    p_new[at] = std::fma(neg_lr, step, w);
    mu_new[at] = m1;
    nu_new[at] = v1;
  }
};

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;
};

// Runs work(unit) for every unit in [0, total) on the pool's threads and the calling thread,
// and returns when all are done. Work stealing over units: helpers that start late find none
// left, and the caller never waits for a helper to start, only for units in progress to
// finish. `work` is copied into the helpers' tasks, which may outlive this call.
template <typename Work>
void RunUnits(ffi::ThreadPool& pool, int64_t total, const Work& work) {
  auto progress = std::make_shared<Progress>();
  auto drain = [progress, work, total]() {
    for (int64_t unit; (unit = progress->next.fetch_add(1)) < total;) {
      work(unit);
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
}

// Both of a tile's sums for rows r0 and on (R of them) of x, one column of vectors, in registers,
// each coefficient c[r, t] = cs[r * kTileRows + t] broadcast once for both:
//   the input gradient's, d[r] += c[r, t] w[t] over the tile rows in use (t < tile_rows) in
//   order (d[r] at d + r * padded, read and written here);
//   the gradient's, g[t] += c[r, t] x[r] (x[r] at xs + r * padded) over r in order, for all
//   kTileRows rows (past tile_rows not used), started XLA's way in the first block (kFirst,
//   R = 2): fma(c0, x0, c1 * x1).
// Two rows of x at a time keep the kTileRows sums of g, the rows' x and d, a tile row and a
// coefficient in 14 vector registers; blocks with more rows, and blocks of fewer tile rows
// that read d twice, were slower on a Zen 3 (docs/benchmark_history.md).
template <int R, bool kFirst>
inline __attribute__((always_inline)) void TileSums(const float* tile, const float* xs,
                                                    int64_t padded, int64_t tile_rows,
                                                    const float* cs, int64_t r0, float* d,
                                                    Lanes (&g)[kTileRows]) {
  Lanes x[R], acc[R];
  for (int q = 0; q < R; ++q) {
    x[q] = load(xs + (r0 + q) * padded);
    acc[q] = load(d + (r0 + q) * padded);
  }
  for (int t = 0; t < kTileRows; ++t) {
    const Lanes w = load(tile + t * padded);
    const bool in_use = t < tile_rows;
    int q = 0;
    if (kFirst) {
      const Lanes c0 = broadcast(cs[t]), c1 = broadcast(cs[kTileRows + t]);
      g[t] = fma(c0, x[0], mul(c1, x[1]));
      if (in_use) {
        acc[0] = fma(c0, w, acc[0]);
        acc[1] = fma(c1, w, acc[1]);
      }
      q = 2;
    }
    for (; q < R; ++q) {
      const Lanes c = broadcast(cs[(r0 + q) * kTileRows + t]);
      g[t] = fma(c, x[q], g[t]);
      if (in_use) acc[q] = fma(c, w, acc[q]);
    }
  }
  for (int q = 0; q < R; ++q) store(d + (r0 + q) * padded, acc[q]);
}

// A tile's rows of ct: cs[r * kTileRows + t] = ct[r, t] for r < rows and t < count, row 0
// from c0 and the others scaled from c_rows (row r - 1, rows m floats apart). Row by row, so
// that each is one run of products over consecutive entries (where it was one entry of
// every row at a time); the inlined call with count = kTileRows is a loop of fixed length.
inline void TileCoefficients(const float* c0, const float* c_rows, const float* c_scale,
                             int64_t m, int64_t rows, int64_t count, float* cs) {
  if (rows > 0) std::copy(c0, c0 + count, cs);
  for (int64_t r = 1; r < rows; ++r) {
    const float scale = c_scale[r - 1];
    const float* from = c_rows + (r - 1) * m;
    float* to = cs + r * kTileRows;
    for (int64_t t = 0; t < count; ++t) to[t] = scale * from[t];
  }
}

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
    const AdamUpdate update{mu_in, nu_in, p_new, mu_new, nu_new, b1, one_minus_b1, b2,
                            one_minus_b2, eps, neg_lr, mu_scale, nu_scale};
    if (rows == 1) {
      for (int64_t j = j_begin; j < j_end; ++j) {
        const int64_t at = (b * m + j) * n;
        const float c = c0[j];
#pragma GCC ivdep
        for (int64_t i = 0; i < n; ++i) {
          const float w = p_in[at + i];
          d[i] = std::fma(c, w, d[i]);
          update.apply<false>(at + i, c * xs[i], w);
        }
      }
    }
    for (int64_t j0 = j_begin; j0 < j_end && rows != 1; j0 += kTileRows) {
      const int64_t tile_rows = std::min(kTileRows, j_end - j0);
      for (int64_t t = 0; t < tile_rows; ++t) {  // before the update overwrites p (in place)
        std::copy(p_in + (b * m + j0 + t) * n, p_in + (b * m + j0 + t + 1) * n,
                  tile + t * padded);
      }
      if (tile_rows == kTileRows) {
        TileCoefficients(c0 + j0, c_rows + j0, c_scale, m, rows, kTileRows, cs);
      } else {
        TileCoefficients(c0 + j0, c_rows + j0, c_scale, m, rows, tile_rows, cs);
      }
      for (int64_t i0 = 0; i0 < padded && rows > 0; i0 += kLanes) {
        Lanes sums[kTileRows];
        TileSums<2, true>(tile + i0, xs + i0, padded, tile_rows, cs, 0, d + i0, sums);
        int64_t r0 = 2;
        for (; r0 + 2 <= rows; r0 += 2) {
          TileSums<2, false>(tile + i0, xs + i0, padded, tile_rows, cs, r0, d + i0, sums);
        }
        if (r0 < rows) {
          TileSums<1, false>(tile + i0, xs + i0, padded, tile_rows, cs, r0, d + i0, sums);
        }
        for (int64_t t = 0; t < kTileRows; ++t) store(g + t * padded + i0, sums[t]);
      }
      for (int64_t t = 0; t < tile_rows; ++t) {
        const int64_t at = (b * m + j0 + t) * n;
        const float* gt = g + t * padded;
        const float* wt = tile + t * padded;
#pragma GCC ivdep
        for (int64_t i = 0; i < n; ++i) update.apply<false>(at + i, gt[i], wt[i]);
      }
    }
    float* partial = partials + unit * k * n;
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(d + r * padded, d + r * padded + n, partial + r * n);
    }
  };

  RunUnits(pool, total, update_block);
  for (int64_t unit = 0; unit < total; ++unit) {
    const int64_t b = unit / blocks_per_run;
    const int64_t rows = std::min<int64_t>(k, std::max<int32_t>(live_data[b], 0));
    const float* d = partials + unit * k * n;
    float* out = d_x + b * k * n;
    for (int64_t i = 0; i < rows * n; ++i) out[i] += d[i];
  }
  return ffi::Error::Success();
}


// The shapes of x [..., rows, n] and a kernel [..., n, m] (`transposed`: [..., m, n]) that
// share their leading dimensions, `runs` of them in all.
struct RowsByKernel {
  int64_t runs = 0, rows = 0, n = 0, m = 0;

  // False where x or the kernel has under 2 dimensions or they do not fit together.
  bool Read(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& kernel,
            bool transposed) {
    const auto x_dims = x.dimensions();
    const auto kernel_dims = kernel.dimensions();
    const size_t xr = x_dims.size(), kr = kernel_dims.size();
    if (xr < 2 || kr < 2) return false;
    rows = x_dims[xr - 2];
    n = x_dims[xr - 1];
    m = kernel_dims[transposed ? kr - 2 : kr - 1];
    runs = n > 0 && m > 0 ? static_cast<int64_t>(kernel.element_count()) / (n * m) : 0;
    return kernel_dims[transposed ? kr - 1 : kr - 2] == n &&
           static_cast<int64_t>(x.element_count()) == runs * rows * n;
  }
};

// A flat vector of floats held as consecutive pieces (ChunkDense's output, its cotangent):
// piece p holds the entries [start[p], start[p] + size[p]), run b's at data[p] + b * size[p].
// Entries past the last piece are not held: they read as zeros, and writes to them are dropped.
struct Pieces {
  std::vector<float*> data;
  std::vector<int64_t> start, size;

  // Reads the pieces of `args` from index `first` on, and their sizes from their element
  // counts over `runs`; false where a piece is not float32 or does not split into the runs.
  bool Read(const ffi::RemainingArgs& args, size_t first, int64_t runs) {
    for (size_t p = first; p < args.size(); ++p) {
      auto piece = args.get<ffi::Buffer<ffi::F32>>(p);
      if (!piece.has_value() || !Add(piece->typed_data(), piece->element_count(), runs)) {
        return false;
      }
    }
    return true;
  }
  bool Read(const ffi::RemainingRets& rets, int64_t runs) {
    for (size_t p = 0; p < rets.size(); ++p) {
      auto piece = rets.get<ffi::Buffer<ffi::F32>>(p);
      if (!piece.has_value() || !Add((*piece)->typed_data(), (*piece)->element_count(), runs)) {
        return false;
      }
    }
    return true;
  }
  int64_t total() const { return start.empty() ? 0 : start.back() + size.back(); }

  // Copies run b's entries [at, at + count) into `to` (ChunkDenseBackward's cotangent).
  void CopyOut(int64_t b, int64_t at, int64_t count, float* to) const {
    for (size_t p = First(at); count > 0; ++p) {
      if (p >= data.size()) {
        std::fill(to, to + count, 0.0f);
        return;
      }
      const int64_t offset = at - start[p];
      const int64_t n = std::min(count, size[p] - offset);
      std::copy(data[p] + b * size[p] + offset, data[p] + b * size[p] + offset + n, to);
      to += n;
      at += n;
      count -= n;
    }
  }

  // Where run b's entries [at, at + count) lie in one piece, their address there, else nullptr.
  float* Inside(int64_t b, int64_t at, int64_t count) const {
    const size_t p = First(at);
    if (p >= data.size() || at + count > start[p] + size[p]) return nullptr;
    return data[p] + b * size[p] + (at - start[p]);
  }

  // Copies `count` floats from `from` into run b's entries [at, at + count) (ChunkDense's output).
  void CopyIn(int64_t b, int64_t at, int64_t count, const float* from) const {
    for (size_t p = First(at); count > 0 && p < data.size(); ++p) {
      const int64_t offset = at - start[p];
      const int64_t n = std::min(count, size[p] - offset);
      std::copy(from, from + n, data[p] + b * size[p] + offset);
      from += n;
      at += n;
      count -= n;
    }
  }

 private:
  bool Add(float* piece, int64_t count, int64_t runs) {
    if (runs <= 0 || count % runs != 0) return false;
    start.push_back(total());
    size.push_back(count / runs);
    data.push_back(piece);
    return true;
  }
  // The piece that holds entry `at` (the number of pieces where none does).
  size_t First(int64_t at) const {
    size_t p = std::upper_bound(start.begin(), start.end(), at) - start.begin();
    p = p == 0 ? 0 : p - 1;
    while (p < data.size() && at >= start[p] + size[p]) ++p;  // past pieces of size 0
    return p;
  }
};

// ChunkDense for G rows of x (row t at x + t * n) over one block of `width` kernel columns,
// packed in `panel` by PackColumns, and its bias: row t's outputs into out[t]. Each output's
// terms are summed in i order with fused multiply-adds from 0, then its bias is added.
template <int G>
void ChunkForwardTile(const float* x, int64_t n, const float* panel, int64_t width,
                      float* const out[]) {
  constexpr int64_t step = 2 * kLanes;
  const int64_t steps = (width + step - 1) / step;
  const float* bias = panel + steps * n * step;
  for (int64_t s = 0; s < steps; ++s) {
    const float* w = panel + s * n * step;
    Lanes acc[G][2];
    for (int t = 0; t < G; ++t) acc[t][0] = acc[t][1] = zero();
    for (int64_t i = 0; i < n; ++i) {
      const Lanes w0 = load(w + i * step);
      const Lanes w1 = load(w + i * step + kLanes);
      for (int t = 0; t < G; ++t) {
        const Lanes a = broadcast(x[t * n + i]);
        acc[t][0] = fma(a, w0, acc[t][0]);
        acc[t][1] = fma(a, w1, acc[t][1]);
      }
    }
    const Lanes b0 = load(bias + s * step), b1 = load(bias + s * step + kLanes);
    const int64_t j = s * step;
    for (int t = 0; t < G; ++t) {
      if (j + step <= width) {
        store(out[t] + j, add(acc[t][0], b0));
        store(out[t] + j + kLanes, add(acc[t][1], b1));
      } else {  // the block's last, partial step
        float last[step];
        store(last, add(acc[t][0], b0));
        store(last + kLanes, add(acc[t][1], b1));
        std::copy(last, last + (width - j), out[t] + j);
      }
    }
  }
}

// ChunkForwardTile<rows> for rows in 1..sizeof...(G).
template <int... G>
void ChunkForwardTileOf(int64_t rows, const float* x, int64_t n, const float* panel,
                        int64_t width, float* const out[], std::integer_sequence<int, G...>) {
  ((rows == G + 1 ? ChunkForwardTile<G + 1>(x, n, panel, width, out) : void()), ...);
}

// Copies the columns [j_begin, j_begin + width) of kernel [n, m] and of bias [m] into
// `panel` ((n + 1) * steps * 2 * kLanes floats), as ChunkForwardTile reads them: for each
// step of 2 vectors of columns, the n rows' 2 vectors in order; then the bias; zeros past
// `width`. Each kernel row is read in order: read across, the block's rows (far apart) were
// left waiting on memory.
void PackColumns(const float* kernel, const float* bias, int64_t n, int64_t m, int64_t j_begin,
                 int64_t width, float* panel) {
  constexpr int64_t step = 2 * kLanes;
  const int64_t steps = (width + step - 1) / step;
  for (int64_t i = 0; i <= n; ++i) {
    const float* row = i < n ? kernel + i * m + j_begin : bias + j_begin;
    float* to = i < n ? panel + i * step : panel + steps * n * step;
    const int64_t stride = i < n ? n * step : step;
    int64_t j = 0;
    for (; j + step <= width; j += step, to += stride) {
      store(to, load(row + j));
      store(to + kLanes, load(row + j + kLanes));
    }
    if (j < width) {  // the last, partial step
      std::copy(row + j, row + width, to);
      std::fill(to + (width - j), to + step, 0.0f);
    }
  }
}

ffi::Error ChunkDenseImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                          ffi::RemainingRets outs) {
  RowsByKernel shape;
  Pieces pieces;
  if (!shape.Read(x, kernel, false) ||
      static_cast<int64_t>(bias.element_count()) != shape.runs * shape.m ||
      !pieces.Read(outs, shape.runs) || pieces.total() > shape.rows * shape.m) {
    return ffi::Error::InvalidArgument("chunk_dense: operand shapes do not match");
  }
  const int64_t runs = shape.runs, rows = shape.rows, n = shape.n, m = shape.m;
  const int64_t blocks_per_run = (m + kBlockColumns - 1) / kBlockColumns;
  const int64_t total = runs * blocks_per_run;
  if (total == 0 || rows == 0) return ffi::Error::Success();
  const float* x_data = x.typed_data();
  const float* kernel_data = kernel.typed_data();
  const float* bias_data = bias.typed_data();
  auto run_block = [=](int64_t unit) {
    const int64_t b = unit / blocks_per_run;
    const int64_t j_begin = (unit % blocks_per_run) * kBlockColumns;
    const int64_t width = std::min(m, j_begin + kBlockColumns) - j_begin;
    const int64_t steps = (width + 2 * kLanes - 1) / (2 * kLanes);
    std::unique_ptr<float[]> panel(new float[(n + 1) * steps * 2 * kLanes]);
    PackColumns(kernel_data + b * n * m, bias_data + b * m, n, m, j_begin, width, panel.get());
    // Each row's outputs go straight into its piece, or, where they span two pieces or pass
    // the last, through a row of `spill`.
    float spill[kForwardRows * kBlockColumns];
    for (int64_t r0 = 0; r0 < rows; r0 += kForwardRows) {
      const int64_t size = std::min<int64_t>(kForwardRows, rows - r0);
      float* out[kForwardRows];
      for (int64_t t = 0; t < size; ++t) {
        out[t] = pieces.Inside(b, (r0 + t) * m + j_begin, width);
        if (out[t] == nullptr) out[t] = spill + t * kBlockColumns;
      }
      ChunkForwardTileOf(size, x_data + (b * rows + r0) * n, n, panel.get(), width, out,
                         std::make_integer_sequence<int, kForwardRows>());
      for (int64_t t = 0; t < size; ++t) {
        if (out[t] == spill + t * kBlockColumns) {
          pieces.CopyIn(b, (r0 + t) * m + j_begin, width, out[t]);
        }
      }
    }
  };
  RunUnits(pool, total, run_block);
  return ffi::Error::Success();
}

// ChunkDenseBackward over I kernel rows i, i + 1, ... and the columns [j_begin, j_end) of a
// block, for G rows of ct (G and I template arguments, so that the G * I sums stay in
// registers, and each vector of ct read serves I kernel rows): adds their terms to d_kernel's
// rows (which `first` starts from 0) and stores their d_x sums.
struct RowPass {
  const float* kernel_row;  // kernel[i, :]; row i + u at kernel_row + u * m
  float* d_kernel_row;  // d_kernel[i, :], likewise
  const float* ct;  // ct[r0, j_begin]; ct[r0 + t, j] at ct + t * ct_stride + j - j_begin
  const float* x;  // x[r0, i]; x[r0 + t, i + u] at x + t * n + u
  float* d_x;  // the block's sum for d_x[r0, i], laid out as x
  int64_t n, m, ct_stride, j_begin, j_lanes_end, j_end;
  bool first;
};

template <int G, int I>
void ChunkRowPass(const RowPass& a) {
  Lanes sums[G][I];
  float tail_sums[G][I];
  for (int t = 0; t < G; ++t) {
    for (int u = 0; u < I; ++u) {
      sums[t][u] = zero();
      tail_sums[t][u] = 0.0f;
    }
  }
  const float* ct = a.ct - a.j_begin;  // ct[r0 + t, j] at ct + t * ct_stride + j
  for (int64_t j = a.j_begin; j < a.j_lanes_end; j += kLanes) {
    Lanes w[I], g[I];
    for (int u = 0; u < I; ++u) {
      w[u] = load(a.kernel_row + u * a.m + j);
      g[u] = a.first ? zero() : load(a.d_kernel_row + u * a.m + j);
    }
    for (int t = 0; t < G; ++t) {
      const Lanes c = load(ct + t * a.ct_stride + j);
      for (int u = 0; u < I; ++u) {
        g[u] = fma(broadcast(a.x[t * a.n + u]), c, g[u]);
        sums[t][u] = fma(c, w[u], sums[t][u]);
      }
    }
    for (int u = 0; u < I; ++u) store(a.d_kernel_row + u * a.m + j, g[u]);
  }
  for (int64_t j = a.j_lanes_end; j < a.j_end; ++j) {
    for (int u = 0; u < I; ++u) {
      float g = a.first ? 0.0f : a.d_kernel_row[u * a.m + j];
      for (int t = 0; t < G; ++t) {
        const float c = ct[t * a.ct_stride + j];
        g = std::fma(a.x[t * a.n + u], c, g);
        tail_sums[t][u] = std::fma(c, a.kernel_row[u * a.m + j], tail_sums[t][u]);
      }
      a.d_kernel_row[u * a.m + j] = g;
    }
  }
  for (int t = 0; t < G; ++t) {
    for (int u = 0; u < I; ++u) a.d_x[t * a.n + u] = sum_lanes(sums[t][u]) + tail_sums[t][u];
  }
}

// ChunkRowPass<rows, I> for rows in 1..sizeof...(G).
template <int I, int... G>
void ChunkRowPassOf(int64_t rows, const RowPass& a, std::integer_sequence<int, G...>) {
  ((rows == G + 1 ? ChunkRowPass<G + 1, I>(a) : void()), ...);
}

ffi::Error ChunkDenseBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                  ffi::Buffer<ffi::F32> kernel, ffi::RemainingArgs ct_pieces,
                                  ffi::ResultBuffer<ffi::F32> d_kernel_out,
                                  ffi::ResultBuffer<ffi::F32> d_x_out,
                                  ffi::ResultBuffer<ffi::F32> d_bias_out) {
  RowsByKernel shape;
  const bool fits = shape.Read(x, kernel, false);
  const int64_t runs = shape.runs, rows = shape.rows, n = shape.n, m = shape.m;
  Pieces ct;
  if (!fits || (runs > 0 && (!ct.Read(ct_pieces, 0, runs) || ct.total() > rows * m)) ||
      static_cast<int64_t>(d_kernel_out->element_count()) != runs * n * m ||
      static_cast<int64_t>(d_x_out->element_count()) != runs * rows * n ||
      static_cast<int64_t>(d_bias_out->element_count()) != runs * m) {
    return ffi::Error::InvalidArgument("chunk_dense_backward: operand shapes do not match");
  }
  float* d_x = d_x_out->typed_data();
  float* d_kernel = d_kernel_out->typed_data();
  float* d_bias = d_bias_out->typed_data();
  std::fill(d_x, d_x + runs * rows * n, 0.0f);
  const int64_t blocks_per_run = (m + kBlockColumns - 1) / kBlockColumns;
  const int64_t total = runs * blocks_per_run;
  if (total == 0 || rows == 0) {
    std::fill(d_kernel, d_kernel + runs * n * m, 0.0f);
    std::fill(d_bias, d_bias + runs * m, 0.0f);
    return ffi::Error::Success();
  }
  // ct whole, [rows, m], is read in place; in pieces, each block's columns are copied first.
  const bool whole = ct.data.size() == 1 && ct.total() == rows * m;
  // Each block's d_x sums, added up in block order once all are done.
  std::unique_ptr<float[]> partial_sums(new float[total * rows * n]);
  float* partials = partial_sums.get();
  const float* x_data = x.typed_data();
  const float* kernel_data = kernel.typed_data();
  // ct's rows in passes of at most kGroupRows, as even as they go.
  const int64_t passes = (rows + kGroupRows - 1) / kGroupRows;
  const int64_t group = (rows + passes - 1) / passes;
  auto run_block = [=](int64_t unit) {
    const int64_t b = unit / blocks_per_run;
    const int64_t j_begin = (unit % blocks_per_run) * kBlockColumns;
    const int64_t j_end = std::min(m, j_begin + kBlockColumns);
    std::unique_ptr<float[]> copied(whole ? nullptr : new float[rows * (j_end - j_begin)]);
    for (int64_t r = 0; !whole && r < rows; ++r) {
      ct.CopyOut(b, r * m + j_begin, j_end - j_begin, copied.get() + r * (j_end - j_begin));
    }
    const int64_t width = j_end - j_begin;
    const int64_t ct_stride = whole ? m : width;
    const float* ct_block = whole ? ct.data[0] + b * rows * m + j_begin : copied.get();
    float* d_bias_block = d_bias + b * m + j_begin;
    std::copy(ct_block, ct_block + width, d_bias_block);
    for (int64_t r = 1; r < rows; ++r) {
      for (int64_t j = 0; j < width; ++j) d_bias_block[j] += ct_block[r * ct_stride + j];
    }
    RowPass a;
    a.n = n;
    a.m = m;
    a.ct_stride = ct_stride;
    a.j_begin = j_begin;
    a.j_end = j_end;
    a.j_lanes_end = j_begin + (j_end - j_begin) / kLanes * kLanes;
    for (int64_t i = 0; i < n; i += kPairRows) {  // two kernel rows at a time, the last alone
      a.kernel_row = kernel_data + (b * n + i) * m;
      a.d_kernel_row = d_kernel + (b * n + i) * m;
      for (int64_t r0 = 0; r0 < rows; r0 += group) {
        a.ct = ct_block + r0 * ct_stride;
        a.x = x_data + (b * rows + r0) * n + i;
        a.d_x = partials + (unit * rows + r0) * n + i;
        a.first = r0 == 0;
        const int64_t size = std::min(group, rows - r0);
        if (i + 1 < n) {
          ChunkRowPassOf<kPairRows>(size, a, std::make_integer_sequence<int, kGroupRows>());
        } else {
          ChunkRowPassOf<1>(size, a, std::make_integer_sequence<int, kGroupRows>());
        }
      }
    }
  };
  RunUnits(pool, total, run_block);
  for (int64_t unit = 0; unit < total; ++unit) {
    const float* d = partials + unit * rows * n;
    float* out = d_x + unit / blocks_per_run * rows * n;
    for (int64_t i = 0; i < rows * n; ++i) out[i] += d[i];
  }
  return ffi::Error::Success();
}

ffi::Error DenseAdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                         ffi::Buffer<ffi::F32> scalars, ffi::Buffer<ffi::F32> p,
                         ffi::Buffer<ffi::F32> mu, ffi::Buffer<ffi::F32> nu,
                         ffi::ResultBuffer<ffi::F32> p_out, ffi::ResultBuffer<ffi::F32> mu_out,
                         ffi::ResultBuffer<ffi::F32> nu_out, float b1, float one_minus_b1,
                         float b2, float one_minus_b2, float eps) {
  const int64_t runs = static_cast<int64_t>(scalars.element_count()) / 3;
  const int64_t total_size = static_cast<int64_t>(p.element_count());
  if (runs < 1 || static_cast<int64_t>(scalars.element_count()) != runs * 3 ||
      total_size % runs != 0 || static_cast<int64_t>(g.element_count()) != total_size ||
      static_cast<int64_t>(mu.element_count()) != total_size ||
      static_cast<int64_t>(nu.element_count()) != total_size) {
    return ffi::Error::InvalidArgument("dense_adam: operand shapes do not match");
  }
  const int64_t size = total_size / runs;
  const int64_t blocks_per_run = (size + kDenseBlock - 1) / kDenseBlock;
  const float* g_data = g.typed_data();
  const float* p_in = p.typed_data();
  const float* scalar_data = scalars.typed_data();
  const AdamUpdate common{mu.typed_data(), nu.typed_data(), p_out->typed_data(),
                          mu_out->typed_data(), nu_out->typed_data(), b1, one_minus_b1, b2,
                          one_minus_b2, eps, 0.0f, 0.0f, 0.0f};
  auto update_block = [=](int64_t unit) {
    const int64_t b = unit / blocks_per_run;
    AdamUpdate update = common;
    update.neg_lr = scalar_data[3 * b];
    update.mu_scale = scalar_data[3 * b + 1];
    update.nu_scale = scalar_data[3 * b + 2];
    const int64_t begin = b * size + (unit % blocks_per_run) * kDenseBlock;
    const int64_t end = std::min(b * size + size, begin + kDenseBlock);
#pragma GCC ivdep
    for (int64_t at = begin; at < end; ++at) update.apply<true>(at, g_data[at], p_in[at]);
  };
  if (size > 0) RunUnits(pool, runs * blocks_per_run, update_block);
  return ffi::Error::Success();
}

// WideRows over a tile of 8 kernel rows (row u at tile + u * padded, zeros past n) and one row
// of x (xr, zeros past n): the 8 sums y[u] into out[u]. Both are whole vectors from a cache
// line's start: read straight from the kernel's rows, a row's last vector took a masked load
// and many crossed a cache line (timed on the Zen 3 EPYC in docs/benchmark_history.md).
inline void WideRowsTile(const float* tile, int64_t padded, const float* xr, float out[8]) {
  Lanes acc[8];
  for (int u = 0; u < 8; ++u) acc[u] = zero();
  for (int64_t i = 0; i < padded; i += kLanes) {
    // x's vector loaded once, and kept in a register: GCC otherwise loaded it again in each
    // multiply-add.
    Lanes xv = load(xr + i);
    keep_in_register(xv);
    for (int u = 0; u < 8; ++u) acc[u] = fma(load(tile + u * padded + i), xv, acc[u]);
  }
  // A copy for the lane sums, so that the sums above stay in registers, not in memory that
  // SumLanes8 reads (which made the loop store all 8 at every turn).
  Lanes done[8];
  for (int u = 0; u < 8; ++u) done[u] = acc[u];
  SumLanes8(done, out);
}

ffi::Error WideRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> y_out) {
  RowsByKernel shape;
  if (!shape.Read(x, kernel, true) ||
      static_cast<int64_t>(y_out->element_count()) != shape.runs * shape.rows * shape.m) {
    return ffi::Error::InvalidArgument("wide_rows: operand shapes do not match");
  }
  const int64_t runs = shape.runs, rows = shape.rows, n = shape.n, m = shape.m;
  const int64_t blocks_per_run = (m + kBlockRows - 1) / kBlockRows;
  const int64_t total = runs * blocks_per_run;
  if (total == 0 || rows == 0) return ffi::Error::Success();
  const float* x_data = x.typed_data();
  const float* kernel_data = kernel.typed_data();
  float* y = y_out->typed_data();
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  auto run_block = [=](int64_t unit) {
    const int64_t b = unit / blocks_per_run;
    const int64_t j_begin = (unit % blocks_per_run) * kBlockRows;
    const int64_t j_end = std::min(m, j_begin + kBlockRows);
    // x's rows and a tile of 8 kernel rows, each row padded with zeros to whole vectors, at a
    // cache line's start.
    constexpr int64_t kLine = 64 / sizeof(float);
    std::unique_ptr<float[]> scratch(new float[(rows + 8) * padded + kLine]());
    float* xs = scratch.get() + (kLine - reinterpret_cast<uintptr_t>(scratch.get()) / sizeof(float)
                                 % kLine) % kLine;
    float* tile = xs + rows * padded;
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(x_data + (b * rows + r) * n, x_data + (b * rows + r + 1) * n, xs + r * padded);
    }
    const float* w0 = kernel_data + b * m * n;
    float* yb = y + b * rows * m;
    float sums[8];
    // Each tile's kernel rows are read from memory once, for all of x's rows; a last tile of
    // fewer than 8 takes zero rows after them.
    for (int64_t j0 = j_begin; j0 < j_end; j0 += 8) {
      const int64_t valid = std::min<int64_t>(8, j_end - j0);
      for (int64_t u = 0; u < 8; ++u) {
        if (u < valid) {
          std::copy(w0 + (j0 + u) * n, w0 + (j0 + u + 1) * n, tile + u * padded);
        } else {
          std::fill(tile + u * padded, tile + u * padded + n, 0.0f);
        }
      }
      // The tile kPrefetchTiles ahead is requested from memory in shares of its cache lines,
      // one share per row of x: left to the hardware's prefetcher, whose stream fell behind
      // the tiles' bursts of reads, the kernel's rows arrived at 8 GB/s (timed on the Zen 3
      // EPYC in docs/benchmark_history.md).
      const int64_t ahead_begin = std::min(j_end, j0 + kPrefetchTiles * 8);
      const int64_t ahead_end = std::min(j_end, ahead_begin + 8);
      const float* ahead = w0 + ahead_begin * n;
      const int64_t lines = ((ahead_end - ahead_begin) * n * int64_t{sizeof(float)} + 63) / 64;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t l = r * lines / rows; l < (r + 1) * lines / rows; ++l) {
          __builtin_prefetch(ahead + l * (64 / sizeof(float)));
        }
        float* out = yb + r * m + j0;
        if (valid == 8) {
          WideRowsTile(tile, padded, xs + r * padded, out);
        } else {
          WideRowsTile(tile, padded, xs + r * padded, sums);
          std::copy(sums, sums + valid, out);
        }
      }
    }
  };
  RunUnits(pool, total, run_block);
  return ffi::Error::Success();
}

// Conv3x3 and Conv3x3KernelGrad: one image at a time, copied with its zero border into
// a buffer of this thread's, reused across calls (which covers the last tile's reads past the
// image's end).
struct ConvShape {
  int64_t images, h, w, c, f, padding, out_h, out_w;
  int64_t padded_w() const { return w + 2 * padding; }
  int64_t padded_floats() const { return ((h + 2 * padding) * padded_w() + kConvTile + 2) * c; }
  // Features per tile: two vectors where they come in pairs, else one.
  int64_t tile_features() const { return f % (2 * kLanes) == 0 ? 2 * kLanes : kLanes; }
};

const float* PaddedImage(const float* x, const ConvShape& s) {
  thread_local std::vector<float> buffer;
  buffer.assign(s.padded_floats(), 0.0f);
  const int64_t wp = s.padded_w();
  for (int64_t h = 0; h < s.h; ++h) {
    std::copy(x + h * s.w * s.c, x + (h + 1) * s.w * s.c,
              buffer.data() + ((h + s.padding) * wp + s.padding) * s.c);
  }
  return buffer.data();
}

// kConvTile output positions of one row, V vectors of features from f0: the 9 c terms of
// each summed into registers, in the order (i, j, c).
template <int V>
void ConvTile(const float* padded, const ConvShape& s, const float* kernel, int64_t f0,
              float* out, int64_t valid) {
  Lanes acc[kConvTile][V];
  for (int p = 0; p < kConvTile; ++p) {
    for (int v = 0; v < V; ++v) acc[p][v] = zero();
  }
  const int64_t wp = s.padded_w();
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      const float* x = padded + (i * wp + j) * s.c;
      const float* k = kernel + (i * 3 + j) * s.c * s.f + f0;
      for (int64_t c = 0; c < s.c; ++c) {
        Lanes kv[V];
        for (int v = 0; v < V; ++v) kv[v] = load(k + c * s.f + v * kLanes);
        for (int p = 0; p < kConvTile; ++p) {
          const Lanes xb = broadcast(x[p * s.c + c]);
          for (int v = 0; v < V; ++v) acc[p][v] = fma(xb, kv[v], acc[p][v]);
        }
      }
    }
  }
  for (int p = 0; p < valid; ++p) {
    for (int v = 0; v < V; ++v) store(out + p * s.f + f0 + v * kLanes, acc[p][v]);
  }
}

// d_kernel[i, j, c0 .. c0 + kGradChannels, f0 ..] += the image's sums over its output
// positions, in order, of padded x times ct.
template <int V>
void KernelGradTile(const float* padded, const float* ct, const ConvShape& s, int64_t i,
                    int64_t j, int64_t c0, int64_t f0, float* d_kernel) {
  Lanes acc[kGradChannels][V];
  for (int a = 0; a < kGradChannels; ++a) {
    for (int v = 0; v < V; ++v) acc[a][v] = zero();
  }
  const int64_t wp = s.padded_w();
  for (int64_t h = 0; h < s.out_h; ++h) {
    const float* x = padded + ((h + i) * wp + j) * s.c + c0;
    const float* g = ct + h * s.out_w * s.f + f0;
    for (int64_t w = 0; w < s.out_w; ++w) {
      Lanes gv[V];
      for (int v = 0; v < V; ++v) gv[v] = load(g + w * s.f + v * kLanes);
      for (int a = 0; a < kGradChannels; ++a) {
        const Lanes xb = broadcast(x[w * s.c + a]);
        for (int v = 0; v < V; ++v) acc[a][v] = fma(xb, gv[v], acc[a][v]);
      }
    }
  }
  float* d = d_kernel + ((i * 3 + j) * s.c + c0) * s.f + f0;
  for (int a = 0; a < kGradChannels; ++a) {
    for (int v = 0; v < V; ++v) {
      float* to = d + a * s.f + v * kLanes;
      store(to, add(load(to), acc[a][v]));
    }
  }
}

// Reads the shape of a convolution's operands x [..., N, H, W, C] and second [..., A, B, C', F]
// (the kernel [3, 3, C, F], or the output gradient [N, H', W', F]); runs = the leading count.
bool ReadConvShape(const ffi::Buffer<ffi::F32>& x, int64_t f, int64_t padding, ConvShape* s,
                   int64_t* runs) {
  const auto dims = x.dimensions();
  if (dims.size() < 4 || padding < 0 || padding > 2) return false;
  const int64_t n = dims.size();
  *s = ConvShape{dims[n - 4], dims[n - 3], dims[n - 2], dims[n - 1], f, padding,
                 dims[n - 3] + 2 * padding - 2, dims[n - 2] + 2 * padding - 2};
  const int64_t image = s->h * s->w * s->c;
  *runs = image > 0 && s->images > 0
              ? static_cast<int64_t>(x.element_count()) / (s->images * image) : 0;
  return *runs > 0 && s->out_h > 0 && s->out_w > 0 && s->f > 0;
}

ffi::Error Conv3x3Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> out,
                       int64_t padding) {
  const auto kernel_dims = kernel.dimensions();
  ConvShape s;
  int64_t runs;
  if (kernel_dims.size() < 4 ||
      !ReadConvShape(x, kernel_dims[kernel_dims.size() - 1], padding, &s, &runs) ||
      s.f % kLanes != 0 ||
      static_cast<int64_t>(kernel.element_count()) != runs * 9 * s.c * s.f ||
      static_cast<int64_t>(out->element_count()) != runs * s.images * s.out_h * s.out_w * s.f) {
    return ffi::Error::InvalidArgument("conv3x3: operand shapes do not match");
  }
  const float* x_data = x.typed_data();
  const float* kernel_data = kernel.typed_data();
  float* out_data = out->typed_data();
  const int64_t pair = s.tile_features();
  auto run_image = [=](int64_t unit) {
    const float* padded = PaddedImage(x_data + unit * s.h * s.w * s.c, s);
    const float* k = kernel_data + unit / s.images * 9 * s.c * s.f;
    float* o = out_data + unit * s.out_h * s.out_w * s.f;
    for (int64_t f0 = 0; f0 < s.f; f0 += pair) {
      for (int64_t h = 0; h < s.out_h; ++h) {
        for (int64_t w0 = 0; w0 < s.out_w; w0 += kConvTile) {
          const float* at = padded + (h * s.padded_w() + w0) * s.c;
          float* to = o + (h * s.out_w + w0) * s.f;
          const int64_t valid = std::min(kConvTile, s.out_w - w0);
          if (pair == kLanes) {
            ConvTile<1>(at, s, k, f0, to, valid);
          } else {
            ConvTile<2>(at, s, k, f0, to, valid);
          }
        }
      }
    }
  };
  RunUnits(pool, runs * s.images, run_image);
  return ffi::Error::Success();
}

ffi::Error Conv3x3KernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> ct,
                                 ffi::ResultBuffer<ffi::F32> d_kernel_out,
                                 ffi::ResultBuffer<ffi::F32> partials_out, int64_t padding) {
  const auto ct_dims = ct.dimensions();
  ConvShape s;
  int64_t runs;
  if (ct_dims.size() < 4 ||
      !ReadConvShape(x, ct_dims[ct_dims.size() - 1], padding, &s, &runs) ||
      s.f % kLanes != 0 || s.c % kGradChannels != 0 ||
      ct_dims[ct_dims.size() - 3] != s.out_h || ct_dims[ct_dims.size() - 2] != s.out_w ||
      static_cast<int64_t>(ct.element_count()) != runs * s.images * s.out_h * s.out_w * s.f ||
      static_cast<int64_t>(d_kernel_out->element_count()) != runs * 9 * s.c * s.f ||
      partials_out->element_count() % d_kernel_out->element_count() != 0) {
    return ffi::Error::InvalidArgument("conv3x3_kernel_grad: operand shapes do not match");
  }
  const int64_t size = 9 * s.c * s.f;
  const int64_t groups = static_cast<int64_t>(partials_out->element_count()) / (runs * size);
  if (groups < 1 || groups > s.images) {
    return ffi::Error::InvalidArgument("conv3x3_kernel_grad: 1 to N groups of images");
  }
  const float* x_data = x.typed_data();
  const float* ct_data = ct.typed_data();
  float* partials = partials_out->typed_data();
  const int64_t pair = s.tile_features();
  auto run_group = [=](int64_t unit) {
    const int64_t b = unit / groups, g = unit % groups;
    float* d = partials + unit * size;
    std::fill(d, d + size, 0.0f);
    for (int64_t n = b * s.images + g * s.images / groups;
         n < b * s.images + (g + 1) * s.images / groups; ++n) {
      const float* padded = PaddedImage(x_data + n * s.h * s.w * s.c, s);
      const float* g_image = ct_data + n * s.out_h * s.out_w * s.f;
      for (int64_t i = 0; i < 3; ++i) {
        for (int64_t j = 0; j < 3; ++j) {
          for (int64_t c0 = 0; c0 < s.c; c0 += kGradChannels) {
            for (int64_t f0 = 0; f0 < s.f; f0 += pair) {
              if (pair == kLanes) {
                KernelGradTile<1>(padded, g_image, s, i, j, c0, f0, d);
              } else {
                KernelGradTile<2>(padded, g_image, s, i, j, c0, f0, d);
              }
            }
          }
        }
      }
    }
  };
  RunUnits(pool, runs * groups, run_group);
  // The groups' sums added in group order: the same result whichever thread ran a group.
  float* d_kernel = d_kernel_out->typed_data();
  for (int64_t b = 0; b < runs; ++b) {
    float* to = d_kernel + b * size;
    std::copy(partials + b * groups * size, partials + (b * groups + 1) * size, to);
    for (int64_t g = 1; g < groups; ++g) {
      const float* from = partials + (b * groups + g) * size;
      for (int64_t e = 0; e < size; ++e) to[e] += from[e];
    }
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(ChunkDense, ChunkDenseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., rows, n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel [..., n, m]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [..., m]
                                  .RemainingRets());  // the pieces of y, each [..., size]

XLA_FFI_DEFINE_HANDLER_SYMBOL(ChunkDenseBackward, ChunkDenseBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., rows, n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel [..., n, m]
                                  .RemainingArgs()  // ct [..., rows, m], or its pieces [..., size]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_kernel [..., n, m]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_x [..., rows, n]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // d_bias [..., m]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DenseAdam, DenseAdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [..., size]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scalars [..., 3]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p [..., size]
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(WideRows, WideRowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., R, n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel [..., m, n]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y [..., R, m]

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3, Conv3x3Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., N, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel [..., 3, 3, C, F]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out [..., N, H', W', F]
                                  .Attr<int64_t>("padding"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3KernelGrad, Conv3x3KernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., N, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct [..., N, H', W', F]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_kernel [..., 3, 3, C, F]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // partials [..., G, 3, 3, C, F]
                                  .Attr<int64_t>("padding"));
