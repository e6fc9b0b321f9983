"""Times training steps of one 3x3 conv layer in each of Conv3x3's forms (HYPERMASK_CONV).

  python experiments/benchmark_conv.py
  python experiments/benchmark_conv.py --forms=nhwc_vjp,im2col --steps=4 --repeats=5

For each conv shape of the published ResNet-20 (width 2: 32, 64 and 128
channels at 32 x 32, 16 x 16 and 8 x 8 pixels, and its two strided convs),
one compiled call runs --steps training steps of the layer inside lax.scan,
as the trainer runs its steps: the forward pass, the gradients of the kernel
and of the input, and an update of the kernel. It prints the fastest of
--repeats calls in each form (`layers.Conv3x3`, the form set by
HYPERMASK_CONV when it is traced) and the largest difference of each form's
results (the kernel after the steps, the input gradients) from the first
form's, relative to their largest value.
"""

import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import backend
from hypermask_jax import errors
from hypermask_jax import layers

_FORMS = flags.DEFINE_list('forms', list(backend.CHOICES['HYPERMASK_CONV']),
                           'The forms to time, in order (HYPERMASK_CONV values).')
_STEPS = flags.DEFINE_integer('steps', 4, 'Training steps per compiled call.')
_REPEATS = flags.DEFINE_integer('repeats', 3,
                                'Timed calls per form and shape; the fastest is shown.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Examples per step (the published batch: 32).')

# (pixels, input channels, output channels, stride) of the published ResNet-20's convs.
SHAPES = ((32, 32, 32, 1), (16, 64, 64, 1), (8, 128, 128, 1), (32, 32, 64, 2), (16, 64, 128, 2))


def training_steps(conv):
  """(params, x, weights) -> --steps steps of SGD on sum(sin(conv(relu(x))) * weights): the
  params after them and each step's input gradient. (With a loss linear in the conv's output,
  as until 2026-12-06, the output gradient is the same at every step, so XLA computed the
  kernel's gradient once, before the loop, and the steps timed the input gradient alone.)"""

  def steps(params, x, weights):
    def step(params, _):
      loss = lambda p, x: jnp.sum(jnp.sin(conv.apply({'params': p}, jax.nn.relu(x))) * weights)
      d_params, d_x = jax.grad(loss, argnums=(0, 1))(params, x)
      return jax.tree.map(lambda p, d: p - 1e-3 * d, params, d_params), d_x
    return jax.lax.scan(step, params, None, length=_STEPS.value)

  return steps


def time_form(form, conv, *args):
  """(the fastest call in seconds, its results) with HYPERMASK_CONV=form when traced."""
  os.environ['HYPERMASK_CONV'] = form
  options = backend.compiler_options('hypermask')  # the published ResNet-20 configs' method
  compiled = jax.jit(training_steps(conv)).lower(*args).compile(options)
  results = jax.block_until_ready(compiled(*args))
  best = float('inf')
  for _ in range(_REPEATS.value):
    tic = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - tic)
  return best, results


def largest_difference(results, reference):
  return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
             for a, b in zip(jax.tree.leaves(results), jax.tree.leaves(reference)))


def main(argv):
  del argv
  allowed = backend.CHOICES['HYPERMASK_CONV']
  if not _FORMS.value or not set(_FORMS.value) <= set(allowed):
    raise errors.BadInput(f'--forms must list some of {",".join(allowed)}; got '
                          f'{",".join(_FORMS.value)}')
  if min(_STEPS.value, _REPEATS.value, _BATCH.value) < 1:
    raise errors.BadInput(f'--steps, --repeats and --batch must be at least 1; got '
                          f'{_STEPS.value}, {_REPEATS.value} and {_BATCH.value}')
  print(f'{_STEPS.value} training steps of one conv per call, batch {_BATCH.value}, fastest of '
        f'{_REPEATS.value} calls (ms per call; difference from {_FORMS.value[0]})')
  for pixels, channels, features, stride in SHAPES:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (_BATCH.value, pixels, pixels, channels))
    conv = layers.Conv3x3(features, stride)
    params = conv.init(keys[1], x)['params']
    weights = jax.random.normal(keys[2], conv.apply({'params': params}, x).shape)
    line = f'{pixels:2d} x {pixels:2d} x {channels:3d} -> {features:3d}, stride {stride}:'
    reference = None
    for form in _FORMS.value:
      seconds, results = time_form(form, conv, params, x, weights)
      reference = results if reference is None else reference
      line += (f' | {form} {1e3 * seconds:8.2f} ms (difference '
               f'{largest_difference(results, reference):.1e})')
    print(line, flush=True)


if __name__ == '__main__':
  errors.run_script(main)
