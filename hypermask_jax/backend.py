"""The implementation choices that depend on the backend, made in one place.

Each choice has a default per backend and an environment variable that forces
it, so that tests on CPU can run (and compare) the branch accelerators run:

| variable | values | default |
|---|---|---|
| HYPERMASK_CONV | `im2col`, `xla` | `im2col` on CPU, `xla` elsewhere |
| HYPERMASK_CPU_VECTOR_WIDTH | `256`, `512` | `512` on CPUs with AVX-512, else XLA's own |

- HYPERMASK_CONV: how layers.Conv3x3 computes its convolution. XLA:CPU runs
  the gradient convolutions of a training step 15-40x slower than their
  im2col form inside a loop (jax-ml/jax#12868); on GPU and TPU XLA's own
  convolution (cuDNN, the MXU) is the fast one.
- HYPERMASK_CPU_VECTOR_WIDTH: the vector width XLA:CPU compiles for (its
  `xla_cpu_prefer_vector_width`). XLA emits 256-bit vectors even where the
  CPU has 512-bit ones (LLVM's default, against the clock drop of older Intel
  chips); on the 2-core AMD EPYC (Zen 4) the published Permuted MNIST step
  takes 12% less CPU time with 512, the Adam update with its fused rank-k
  gradient 30% less. Elementwise results are identical; reductions may round
  differently.

The variables are read when a function is traced, so a process can switch
between runs (tests do, with monkeypatch.setenv).
"""

import os

import jax

CHOICES = {'HYPERMASK_CONV': ('im2col', 'xla'), 'HYPERMASK_CPU_VECTOR_WIDTH': ('256', '512')}


def _forced(variable):
  value = os.environ.get(variable, '')
  if value and value not in CHOICES[variable]:
    raise ValueError(f'{variable}={value!r}: must be one of {CHOICES[variable]} (or unset)')
  return value or None


def conv():
  """'im2col' or 'xla': how 3x3 convolutions are computed."""
  return _forced('HYPERMASK_CONV') or ('im2col' if jax.default_backend() == 'cpu' else 'xla')


def cpu_has_avx512():
  """Whether this (Linux) machine's CPU has AVX-512 (False where /proc/cpuinfo is missing)."""
  try:
    with open('/proc/cpuinfo') as f:
      return any(line.startswith('flags') and ' avx512f' in line for line in f)
  except OSError:
    return False


def compiler_options():
  """XLA compiler options for the compiled train and evaluation functions."""
  if jax.default_backend() != 'cpu':
    return {}
  width = _forced('HYPERMASK_CPU_VECTOR_WIDTH') or ('512' if cpu_has_avx512() else None)
  return {'xla_cpu_prefer_vector_width': int(width)} if width else {}
