"""The implementation choices that depend on the backend, made in one place.

Each choice has a default per backend and an environment variable that forces
it, so that tests on CPU can run (and compare) the branch accelerators run:

| variable | values | default |
|---|---|---|
| HYPERMASK_CONV | `nhwc_vjp`, `im2col`, `xla`, `ffi` | on CPU with one device: `ffi` where the kernels build, else `nhwc_vjp`; elsewhere `xla` |
| HYPERMASK_CPU_VECTOR_WIDTH | `256`, `512` | `512` on CPUs with AVX-512, else XLA's own |
| HYPERMASK_CHUNK_BACKWARD | `ffi`, `direct`, `transposed_copy` | on CPU with one device: `ffi` for fan-in up to 64 where the kernel builds, else `transposed_copy` for fan-in 25-30; elsewhere `direct` |
| HYPERMASK_ROW_INPUT_GRAD | `fold`, `two_rows` | `fold` on CPU, `two_rows` elsewhere |
| HYPERMASK_CPU_YNNPACK | `on`, `off` | on CPU: `off` for HNET unless its chunk layer's backward pass is `ffi`, `on` for the others |
| HYPERMASK_FACTORED_ADAM | `ffi`, `xla` | `ffi` on CPU with one device where the kernels build, else `xla` |
| HYPERMASK_WIDE_PRODUCT | `ffi`, `xla` | `ffi` on CPUs without AVX-512 with one device where the kernels build, else `xla` |
| HYPERMASK_SHUFFLE_ROUNDS | `unrolled`, `loop` | `loop` on CPU, `unrolled` elsewhere |

- HYPERMASK_CONV: how layers.Conv3x3 computes its convolution. Inside a loop
  XLA:CPU runs the gradient convolutions JAX derives 15-40x slower than their
  im2col form (jax-ml/jax#12868); `nhwc_vjp` writes them as convolutions in
  the form XLA:CPU hands to its convolution library (strided convs stay
  im2col), which made the published ResNet-20 HyperMask step at task 1 on the
  2-core AMD EPYC (Zen 5) 13-24% faster than `im2col` (`layers.Conv3x3`,
  `layers.nhwc_vjp_conv3x3`). `ffi` (`layers.kernel_conv3x3`) runs the
  convolutions of stride 1 whose channel counts are multiples of 16 (all but
  the first layer's) and their two gradients in cpu_kernels.cc's Conv3x3 and
  Conv3x3KernelGrad, the others as `nhwc_vjp`. XLA:CPU's library (YNNPACK)
  ran ResNet-20's convolutions at 100-240 GFLOP/s in the published step
  (`experiments/profile_step.py`), the 32-channel ones and the kernels'
  gradients slowest, and the `nhwc_vjp` kernel gradients' transposed copies
  of the activations took 24 ms per step more; the kernels ran them at
  250-290 GFLOP/s alone. On a 2-core Intel Xeon (Emerald Rapids),
  `experiments/compare_checkouts.py --before=.
  --before_env=HYPERMASK_CONV=nhwc_vjp`, medians of 5 alternating calls of
  5 steps at task 1: ResNet-20 467.2 -> 324.9 ms, ZenkeNet 172.4 -> 146.8 ms
  (docs/benchmark_history.md). Their sums run in another order than
  YNNPACK's, so the results differ by float rounding. The runs of a program
  split over several devices, and a machine where the kernels cannot be
  built, use `nhwc_vjp`. On GPU and TPU XLA's own convolution and gradient
  (cuDNN, the MXU) are the fast ones.
- HYPERMASK_CPU_VECTOR_WIDTH: the vector width XLA:CPU compiles for (its
  `xla_cpu_prefer_vector_width`). XLA emits 256-bit vectors even where the
  CPU has 512-bit ones (LLVM's default, against the clock drop of older Intel
  chips); on the 2-core AMD EPYC (Zen 4) the published Permuted MNIST step
  takes 12% less CPU time with 512, the Adam update with its fused rank-k
  gradient 30% less. Elementwise results are identical; reductions may round
  differently.
- HYPERMASK_CHUNK_BACKWARD: how `hypernet.chunk_dense` computes its backward
  pass. `ffi`: cpu_kernels.cc's ChunkDenseBackward, the kernel's gradient
  x^T ct and the input's ct @ kernel^T together, in one pass over the kernel
  and ct, where XLA:CPU reads both twice and runs the thin products well
  below its matmul rate. At HNET Permuted MNIST's size (25 rows of 78,000,
  fan-in 25) on a 2-core Intel Xeon (Emerald Rapids), both products took
  1.36-1.82 ms (fastest, median of 40 calls) in the kernel against 2.5-3.7 ms
  for XLA's forms below, and the published HNET steps, with YNNPACK on as
  below, went (`experiments/compare_checkouts.py` against the commit
  before, medians, with dense Adam, factored_adam.py): Permuted MNIST 17.54
  -> 13.10 ms at task 1 and 30.77 -> 30.42 ms at task 10, Split MNIST 2.87
  -> 2.68 ms at task 1 and 5.69 -> 5.57 ms at task 5
  (docs/benchmark_history.md). It is the default on CPU
  for fan-ins up to 64, where the products are thin; above (Permuted
  MNIST-100's 350, a product of 4 GFLOP) XLA's blocked matmuls are the
  faster. The kernel sums d_kernel over the rows in order and d_x in blocks
  of columns, so both differ from XLA's products by float rounding. The runs
  of a program split over several devices, and a machine where the kernel
  cannot be built, use XLA's products. With `ffi`, the layer's outputs for
  the task being trained and evaluated also come from a kernel, ChunkDense
  (`hypernet.chunk_dense_pieces`), which writes them straight into the
  target's tensors, and ChunkDenseBackward reads those tensors' gradients as
  they are: through XLA, XLA:CPU copied each tensor out of the flat output
  and concatenated their gradients back into one, two passes over it (on
  HNET Permuted MNIST at task 1, 0.9 and 1.0 ms of a 21.5 ms step on a
  2-core AMD EPYC, Zen 3; `experiments/compare_checkouts.py`, 16 calls of
  50 steps, the median of the paired calls' ratios: Permuted MNIST 0.859 at
  task 1, 25.59 -> 22.73 ms, and 0.985 at task 10; Split MNIST 0.888 at
  task 1). Otherwise the kernel's gradient is
  XLA's product, and the input gradient, ct [rows, m] times the kernel
  [fan_in, m] transposed: `direct`,
  one dot contracting both operands' minor axis, or `transposed_copy`, a copy
  of the kernel as [m, fan_in] and a plain dot. Timed alone on the 2-core AMD
  EPYC (Zen 4), for 12 to 372 rows and fan-ins from 4 to 350, XLA:CPU's
  YNNPACK ran the direct dot faster than the copy and the plain dot, or within
  10% of them, except at fan-ins 25 to 30, where it took 1.04-2.0x as long
  with 12 to 48 rows: the published HNET Permuted MNIST's fan-in is 25 (25
  rows of 78,000: 2.8-3.6 ms against 1.7-2.1 ms). HNET Split MNIST's fan-in 10
  (12 rows of 42,000) took 0.24-0.31 against 0.45-0.67 ms, Permuted
  MNIST-100's 350 (372 rows of 7500) 10.5 against 13.2-14.9 ms. On GPU and TPU
  the direct dot needs no copy; on an H200 the HNET steps took the same time
  in both forms (0.20-0.21 ms on Split MNIST, 0.29 ms on Permuted MNIST, at
  task 1). With YNNPACK off (HNET's default on CPU, below), Eigen's direct
  dot was no faster than the copy: HNET Permuted MNIST took 20.2 against
  19.8 ms per step at task 10, 8.16 against 8.00 ms at task 1, with the same
  parameters (`experiments/compare_checkouts.py --before=.
  --before_env=HYPERMASK_CHUNK_INPUT_GRAD=direct`, medians; the variable's
  name then). The two forms may round differently.
- HYPERMASK_ROW_INPUT_GRAD: how `wide_dense.WideDense` computes one row's
  input gradient, the row times its [m, n] kernel (the HyperMask steps at
  their first task): `fold`, a matmul of s rows over the kernel viewed as
  [m / s, s * n] (`wide_dense._row_times_kernel`), or `two_rows`, the row and
  a zero row times the kernel. On the 2-core AMD EPYC (Zen 5) the fold made
  the published steps at task 1 3-11% faster (Permuted MNIST 152 -> 138 ms,
  Split MNIST 15.5 -> 13.9 ms). On TPU the kernel's view as [m / s, s * n]
  would change its tiled layout, a copy of the whole kernel at every step,
  and the GPU steps were measured with the two-row product, so accelerators
  keep it. The two forms round differently.
- HYPERMASK_CPU_YNNPACK: whether XLA:CPU hands dots, reductions and some
  elementwise fusions to YNNPACK (its default) or compiles them itself, with
  Eigen's matmuls (`xla_cpu_experimental_ynn_fusion_type` set empty). It is
  chosen per method, because it goes opposite ways on the two kinds of step.
  HNET's steps are made of small products, the chunk layer's thin ones
  ([25, 78000] x [78000, 25]) and the regulariser's Gram-like ones over the
  old tasks' outputs, and of sums over them, which YNNPACK runs slowly.
  HyperMask's are made of large products, which YNNPACK runs faster. On the
  2-core AMD EPYC (Zen 5), `experiments/compare_checkouts.py --before=.
  --before_env=HYPERMASK_CPU_YNNPACK=on` (or `=off`), medians of the
  alternating calls, with YNNPACK -> without: HNET Permuted MNIST 26.2 ->
  22.0 ms at task 10, HNET Split MNIST 3.66 -> 3.28 ms at task 5, Permuted
  MNIST-100 1050 -> 522 ms at task 100, Split MNIST with HNET's full
  (unchunked) hypernetwork 31.7 -> 28.9 ms at task 5; at task 1 about the
  same (HNET Permuted MNIST 9.48 -> 9.74 ms in that sitting, -7% to +3% in
  four; HNET Split MNIST 2.67 -> 2.62 ms; Permuted MNIST-100 24.7 ->
  26.4 ms, +2% to +7% in two). HyperMask with YNNPACK -> without: ResNet-20
  264 -> 716 ms at task 1, Permuted MNIST 220 -> 291 ms and with a chunked
  hypernetwork 88 -> 105 ms at task 10, ZenkeNet 149 -> 172 ms at task 10,
  Split MNIST 17.4 -> 19.4 ms at task 5. With the chunk layer's backward
  pass in the CPU kernel (HYPERMASK_CHUNK_BACKWARD=ffi), YNNPACK's slow thin
  products are gone from the HNET steps, and its faster products of the
  target network pay: on the 2-core Intel Xeon, with YNNPACK -> without
  (medians): HNET Permuted MNIST 15.32 -> 17.74 ms at task 1 and 43.45 ->
  44.60 ms at task 10, HNET Split MNIST 3.55 -> 3.73 ms at task 1 and 7.85 ->
  8.01 ms at task 5. So HNET steps compile with YNNPACK where that kernel
  runs their chunk layer, and without it otherwise (Permuted MNIST-100's
  fan-in 350, the full hypernetwork, no compiler). The two round
  differently; on other backends the option does not exist.
- HYPERMASK_FACTORED_ADAM: how the largest parameters get Adam's update.
  `ffi`: by cpu_kernels.cc's C++ kernels (factored_adam.py): HyperMask's full
  hypernetwork's output kernel by FactoredAdam, one pass over the kernel and
  its two moments that sums only the gradient's rows in use and computes the
  layer's input gradient on the way, and every other array of at least
  factored_adam.DENSE_MIN_SIZE entries by DenseAdam, one pass in place where
  XLA:CPU makes three loops (the HNET chunk layer's kernel, the target
  network's large kernels). `xla`: optax's update, with the factored
  gradient fused into XLA's three loops, and the input gradient XLA's
  product. Measured in the published steps: see factored_adam.py and
  docs/benchmark_history.md. The kernels run on CPU only; the runs of a
  program split over several devices use `xla` (XLA cannot partition the
  kernels' calls), and where the kernels cannot be compiled a warning says
  why and `xla` runs. On GPU and TPU XLA fuses the update into one loop
  itself. FactoredAdam and XLA sum the input gradient in different orders,
  so the hidden layers' gradients differ by float rounding; the update
  itself is the same to the bit for the same gradient (with more than one
  row in use, a compiler that fused the gradient's sum otherwise could round
  its last bit differently), and DenseAdam's moments are optax's to the bit
  and its parameters within the rounding of their last multiply-add.

- HYPERMASK_WIDE_PRODUCT: how `wide_dense.WideDense` computes the product
  of two or more rows (the current task's and the old tasks' in the
  regulariser) with the full hypernetwork's output kernel, [r, n] x [m, n]^T
  with m in the millions. `ffi`: cpu_kernels.cc's WideRows, which reads each
  tile of 8 kernel rows once for all the rows and sums each output in vector
  lanes, then over the lanes in a fixed tree. `xla`: XLA's dot (YNNPACK on
  CPU). On a 2-core AMD EPYC (Zen 3: `cpu family 25`, AVX2 only), at the
  Permuted MNIST size (m = 2,036,010, n = 100),
  `experiments/benchmark_wide_product.py` (medians of 6 alternating calls,
  the output's page faults included) gave XLA 149.5, 136.3, 235.1 and 225.7
  ms for 2, 4, 8 and 10 rows, the kernel 52.6, 69.7, 175.8 and 203.9 ms; for
  one row XLA's took 44.9 ms and the kernel 70.6, so one row stays XLA's
  (`wide_dense._by_kernel`). The published steps (`compare_checkouts.py`
  against the commit before, medians): Permuted MNIST 369.0 -> 344.5 ms at
  task 3, ZenkeNet 416.6 -> 398.9 ms at task 10. On
  CPUs with AVX-512 the default stays `xla`: on the 2-core Intel Xeon
  (Emerald Rapids) a kernel of the same kind (dot products over the kernel
  rows, its lane sums as a tree) took 91.6 ms for 10 rows against XLA's
  76.7 ms (docs/benchmark_history.md, stop 45). The two sum in different
  orders, so they differ by float rounding. The runs of a program split over
  several devices, and a machine where the kernels cannot be built, use
  `xla`; on GPU and TPU XLA's dot is the product.
- HYPERMASK_SHUFFLE_ROUNDS: how `tasks.permuted_position` runs the batch
  shuffle's swap-or-not rounds (6 ceil(log2 n): 84 for a Split MNIST task, 96 for
  Permuted MNIST), once per step. `unrolled`: straight-line code; a GPU
  needs it, as each turn of a loop in a compiled program waits for the host
  there (1.8 ms per loop and step). `loop`: a loop of 6 rounds a turn.
  XLA:CPU compiles the unrolled rounds as one large fusion (0.5 s of LLVM's
  time in the HNET Split MNIST train chunk). On the 2-core AMD EPYC (Zen 3)
  that chunk compiled in 4.8-6.5 s with the loop against 7.8-8.4 s unrolled
  (three each, alternating), and the steps took the same time
  (`compare_checkouts.py --before=. --before_env=HYPERMASK_SHUFFLE_ROUNDS=unrolled`,
  the median ratio of the paired calls: HNET Split MNIST 0.996 at task 2,
  HNET Permuted MNIST 0.993 and 0.993 with either built first), the
  parameters the same to the bit. Both are integer arithmetic: the positions
  are the same (tests/test_data.py).

The variables are read when a function is traced (the compiler options,
HYPERMASK_CPU_VECTOR_WIDTH and HYPERMASK_CPU_YNNPACK, when a Trainer is
built), so a process can switch between runs (tests do, with
monkeypatch.setenv); a run checks them all before it starts
(`check_environment`), so a bad value stops it with one line.
"""

import functools
import os

from absl import logging
import jax

from hypermask_jax import errors
from hypermask_jax import cpu_kernels

CHOICES = {'HYPERMASK_CONV': ('nhwc_vjp', 'im2col', 'xla', 'ffi'),
           'HYPERMASK_CPU_VECTOR_WIDTH': ('256', '512'),
           'HYPERMASK_CHUNK_BACKWARD': ('ffi', 'direct', 'transposed_copy'),
           'HYPERMASK_ROW_INPUT_GRAD': ('fold', 'two_rows'),
           'HYPERMASK_CPU_YNNPACK': ('on', 'off'),
           'HYPERMASK_FACTORED_ADAM': ('ffi', 'xla'),
           'HYPERMASK_WIDE_PRODUCT': ('ffi', 'xla'),
           'HYPERMASK_SHUFFLE_ROUNDS': ('unrolled', 'loop')}


# On CPU, every compiled function. XLA's copy insertion by region analysis finds that a
# conditional's branch which returns one of its operands unchanged need not copy it, as the
# regulariser's switch passes the HNET gradients through at task 0. The copies in the
# compiled train chunk, of any branch: HNET Permuted MNIST 8.2M floats without it and 6.1M
# with it (the chunk layer's gradients are gone; since ChunkDenseBackward makes them on CPU,
# they pass through uncopied either way), Permuted MNIST 38.8M and 36.8M (copies of the
# target's weights are gone). It changes which buffers are copied, never a number
# (tests/test_backend.py), so no variable turns it off. On the 2-core AMD
# EPYC (Zen 5), experiments/compare_checkouts.py against the commit before, medians (ms per
# step), the parameters the same to the bit: HNET Permuted MNIST 9.56 -> 8.77 at task 1
# (fastest 8.01 -> 7.87), Permuted MNIST-100 24.49 -> 23.69 at task 1; the HyperMask steps
# (Permuted MNIST at task 10, ZenkeNet and ResNet-20 at task 1) within the noise. Compile
# times were the same or shorter (Permuted MNIST's train chunk 5.6-5.8 -> 4.0-4.1 s).
COPY_INSERTION = {'xla_cpu_copy_insertion_use_region_analysis': True}

# On CPU, the program that initialises the train state (Trainer.init_state) is compiled with
# LLVM at -O1 instead of XLA's default -O2. It runs once per program, and compiling it is
# mostly compiling every parameter's random initialiser (a threefry loop and a fusion per
# tensor: 93 loops and 636 fusions for ResNet-20). On the 2-core AMD EPYC (Zen 5), with the
# compilation cache off, its compile time went from 4.5-5.8 to 2.5-3.2 s for ResNet-20,
# 3.1-3.3 to 1.3-1.5 s for ZenkeNet, 2.1-2.6 to 1.1-1.3 s for Permuted MNIST, 1.5-1.6 to
# 0.9 s for Split MNIST and 1.4-1.5 to 0.5 s for HNET Split MNIST; its run time stayed the
# same (within the machine's 2x spread), and the state came out the same to the bit for
# every config in configs/ and for the small configs of tests/test_backend.py.
# -O0 compiled faster still but changed the values. The other programs keep -O2: -O1 changed
# the rounding of the train step (where it saved a tenth of the compile time) and of the
# validation metrics of ResNet-20.
QUICK_COMPILE = {'xla_backend_optimization_level': 1}


class BadVariable(errors.BadInput, ValueError):
  """One of CHOICES' variables is set to a value it does not allow."""


def _forced(variable):
  value = os.environ.get(variable, '')
  if value and value not in CHOICES[variable]:
    raise BadVariable(f'{variable}={value!r}: must be one of {CHOICES[variable]} (or unset)')
  return value or None


def check_environment():
  """Raises BadVariable for the first variable of CHOICES set to a value it does not allow,
  or to one this machine cannot run.

  The choices are read when a function is traced, which may be after a run
  has written to its workdir; a run checks them all before it starts. The
  CPU kernels are built here only where a variable forces them (to find out
  whether they can run): otherwise the first trace builds them, after the
  config has been checked, so that bad input is refused in seconds.
  """
  for variable in CHOICES:
    _forced(variable)
  kernel_choices = {'HYPERMASK_FACTORED_ADAM': factored_adam,
                    'HYPERMASK_CHUNK_BACKWARD': lambda: chunk_backward(0),
                    'HYPERMASK_CONV': conv, 'HYPERMASK_WIDE_PRODUCT': wide_product}
  for variable, choice in kernel_choices.items():
    if _forced(variable) == 'ffi':
      choice()  # raises BadVariable where the kernel cannot run


def conv():
  """'ffi', 'nhwc_vjp', 'im2col' or 'xla': how 3x3 convolutions are computed (layers.Conv3x3)."""
  forced = _forced('HYPERMASK_CONV')
  if forced != 'ffi' and (forced or jax.default_backend() != 'cpu'):
    return forced or 'xla'
  if _cpu_kernel('HYPERMASK_CONV', forced == 'ffi', 'the 3x3 convolution kernel',
                 "the 3x3 convolutions use XLA's (nhwc_vjp)"):
    return 'ffi'
  return 'nhwc_vjp'


def chunk_backward(fan_in):
  """'ffi', 'direct' or 'transposed_copy': how chunk_dense's backward pass is computed."""
  forced = _forced('HYPERMASK_CHUNK_BACKWARD')
  if forced != 'ffi' and (forced or jax.default_backend() != 'cpu'):
    return forced or 'direct'
  if (forced or fan_in <= 64) and _cpu_kernel(
      'HYPERMASK_CHUNK_BACKWARD', forced == 'ffi', "the chunk layer's backward kernel",
      "the chunked hypernetworks' backward pass uses XLA's products"):
    return 'ffi'
  return 'transposed_copy' if 25 <= fan_in <= 30 else 'direct'


def row_input_grad():
  """'fold' or 'two_rows': how WideDense computes one row's input gradient (see above)."""
  return _forced('HYPERMASK_ROW_INPUT_GRAD') or ('fold' if jax.default_backend() == 'cpu'
                                                 else 'two_rows')


def shuffle_rounds():
  """'unrolled' or 'loop': how tasks.permuted_position runs its rounds (see above)."""
  return _forced('HYPERMASK_SHUFFLE_ROUNDS') or ('loop' if jax.default_backend() == 'cpu'
                                                 else 'unrolled')


def cpu_has_avx512():
  """Whether this (Linux) machine's CPU has AVX-512 (False where /proc/cpuinfo is missing)."""
  try:
    with open('/proc/cpuinfo') as f:
      return any(line.startswith('flags') and ' avx512f' in line for line in f)
  except OSError:
    return False


def cpu_ynnpack(method, chunk_fan_in=None):
  """'on' or 'off': whether XLA:CPU uses YNNPACK in the steps of `method`, whose chunked
  hypernetwork's output layer has fan-in chunk_fan_in (None without one; see above)."""
  forced = _forced('HYPERMASK_CPU_YNNPACK')
  if forced or method != 'hnet':
    return forced or 'on'
  return 'on' if chunk_fan_in is not None and chunk_backward(chunk_fan_in) == 'ffi' else 'off'


def compiler_options(method, chunk_fan_in=None):
  """XLA compiler options for the compiled functions of a run of `method` (config.method)
  with a chunked hypernetwork's output layer of fan-in chunk_fan_in (hypernet.chunk_fan_in)."""
  if jax.default_backend() != 'cpu':
    return {}
  options = {}
  width = _forced('HYPERMASK_CPU_VECTOR_WIDTH') or ('512' if cpu_has_avx512() else None)
  if width:
    options['xla_cpu_prefer_vector_width'] = int(width)
  if cpu_ynnpack(method, chunk_fan_in) == 'off':
    options['xla_cpu_experimental_ynn_fusion_type'] = ''  # empty: no fusion goes to YNNPACK
  return {**options, **COPY_INSERTION}


def init_compiler_options(method, chunk_fan_in=None):
  """The compiler options of the program that initialises the train state (QUICK_COMPILE)."""
  options = compiler_options(method, chunk_fan_in)
  return {**options, **QUICK_COMPILE} if jax.default_backend() == 'cpu' else options


def factored_adam():
  """'ffi' or 'xla': how the largest parameters get Adam's update (see above)."""
  forced = _forced('HYPERMASK_FACTORED_ADAM')
  if forced == 'xla':
    return 'xla'
  return 'ffi' if _cpu_kernel('HYPERMASK_FACTORED_ADAM', forced == 'ffi', 'the CPU Adam kernel',
                              "the steps use optax's Adam") else 'xla'


def wide_product():
  """'ffi' or 'xla': how WideDense computes its product of two or more rows (see above)."""
  forced = _forced('HYPERMASK_WIDE_PRODUCT')
  if forced == 'xla' or (not forced and (jax.default_backend() != 'cpu' or cpu_has_avx512())):
    return 'xla'
  return 'ffi' if _cpu_kernel('HYPERMASK_WIDE_PRODUCT', forced == 'ffi',
                              "the wide layer's product kernel",
                              "the wide layer's products are XLA's") else 'xla'


def _cpu_kernel(variable, forced, kernel, instead):
  """Whether cpu_kernels.py's kernels can run in this process's steps. Where they cannot,
  raises BadVariable if `variable` forces them (`forced`), else warns once on CPU."""
  reason = cpu_kernels.unavailable_reason()
  if not reason and jax.device_count() > 1:
    reason = (f'this process has {jax.device_count()} devices, and XLA cannot split the '
              "kernel's call over them")
  if reason and forced:
    raise BadVariable(f'{variable}=ffi: its CPU kernel cannot run here: {reason}')
  if reason and jax.default_backend() == 'cpu':
    _warn_once(f'hypermask_jax: {kernel} is off ({reason}); {instead}')
  return not reason


@functools.cache
def _warn_once(message):
  logging.warning(message)
