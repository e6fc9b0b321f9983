"""The implementation choices that depend on the backend, made in one place.

Each choice has a default per backend and an environment variable that forces
it, so that tests on CPU can run (and compare) the branch accelerators run:

| variable | values | default |
|---|---|---|
| HYPERMASK_CONV | `im2col`, `xla` | `im2col` on CPU, `xla` elsewhere |

- HYPERMASK_CONV: how layers.Conv3x3 computes its convolution. XLA:CPU runs
  the gradient convolutions of a training step 15-40x slower than their
  im2col form inside a loop (jax-ml/jax#12868); on GPU and TPU XLA's own
  convolution (cuDNN, the MXU) is the fast one.

The variables are read when a function is traced, so a process can switch
between runs (tests do, with monkeypatch.setenv).
"""

import os

import jax

CHOICES = {'HYPERMASK_CONV': ('im2col', 'xla')}


def _forced(variable):
  value = os.environ.get(variable, '')
  if value and value not in CHOICES[variable]:
    raise ValueError(f'{variable}={value!r}: must be one of {CHOICES[variable]} (or unset)')
  return value or None


def conv():
  """'im2col' or 'xla': how 3x3 convolutions are computed."""
  return _forced('HYPERMASK_CONV') or ('im2col' if jax.default_backend() == 'cpu' else 'xla')
