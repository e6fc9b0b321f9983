"""The CPU Adam kernel for a factored gradient (factored_adam.py) against optax's update."""

import os
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hypermask_jax import backend
from hypermask_jax import factored_adam
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.methods.hypermask import HyperMask
from tests.conftest import fresh_program
from tests.conftest import run_chunk
from tests.test_train import tiny_config

# Where a compiler is found the kernel must build: a failed build fails these tests.
needs_kernel = pytest.mark.skipif(
    jax.default_backend() != 'cpu' or not shutil.which(os.environ.get('CXX', 'g++')),
    reason='the kernel runs on CPU only, and needs a C++ compiler')


def optax_step(grad, params, mu, nu, rate, count):
  """optax.adam's step on the gradient as wide_dense writes it for XLA to fuse into the step:
  the sum of the rows' outer products, the rows from `live` on zeros."""
  x = jnp.where((jnp.arange(grad.x.shape[0]) < grad.live)[:, None], grad.x, 0.0)
  dense = sum(grad.ct[i][:, None] * x[i][None, :] for i in range(x.shape[0]))
  tx = optax.adam(rate)
  state = (optax.ScaleByAdamState(count=count, mu=mu, nu=nu), optax.EmptyState())
  updates, (adam, _) = tx.update(dense, state, params)
  return optax.apply_updates(params, updates), adam.mu, adam.nu


def kernel_step(grad, params, mu, nu, rate, count):
  tx = trainer_lib.optimizer(rate)
  state = (optax.ScaleByAdamState(count=count, mu={'k': mu}, nu={'k': nu}), optax.EmptyState())
  new_params, (adam, _) = factored_adam.apply(tx, rate, {'k': grad}, state, {'k': params})
  return new_params['k'], adam.mu['k'], adam.nu['k']


def random_step_inputs(rng, rows, live, m=5000, n=37):
  """A FactoredGradient with rows [rows, m] x [rows, n] (live of them in use) and a state."""
  ct, x, p, mu, nu = (rng.standard_normal(s).astype(np.float32)
                      for s in [(rows, m), (rows, n), (m, n), (m, n), (m, n)])
  return (factored_adam.FactoredGradient(jnp.asarray(ct), jnp.asarray(x), jnp.int32(live)),
          jnp.asarray(p), jnp.asarray(0.1 * mu), jnp.asarray(0.01 * nu * nu))


@needs_kernel
@pytest.mark.parametrize('rows,live,count', [(1, 1, 0), (4, 1, 3), (4, 3, 0), (10, 10, 7),
                                             (3, 0, 2)])
def test_the_kernel_is_optax_adam_on_the_dense_gradient(rows, live, count):
  """Each of p, mu, nu to optax's on the gradient as the XLA step forms it: to the bit with at
  most one live row, within the sum's last bits with more."""
  grad, p, mu, nu = random_step_inputs(np.random.default_rng(rows * 10 + live), rows, live)
  args = (grad, p, mu, nu, jnp.float32(1e-3), jnp.int32(count))
  compile_options = backend.compiler_options('hypermask')
  got = jax.jit(kernel_step, compiler_options=compile_options)(*args)
  want = jax.jit(optax_step, compiler_options=compile_options)(*args)
  assert float(jnp.abs(got[0] - p).max()) > 1e-4  # the step moved the parameters
  for g, w in zip(got, want):
    if live <= 1:
      np.testing.assert_array_equal(g, w)
    else:
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


@needs_kernel
def test_the_kernel_takes_each_runs_own_rows_rate_and_live_count_under_vmap():
  rng = np.random.default_rng(0)
  runs = [random_step_inputs(rng, 3, live) for live in (1, 3)]
  rates = jnp.asarray([1e-3, 3e-2], jnp.float32)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *runs)
  both = jax.jit(jax.vmap(kernel_step, in_axes=(0, 0, 0, 0, 0, None)))(
      *stacked, rates, jnp.int32(1))
  for i, run in enumerate(runs):
    alone = jax.jit(kernel_step)(*run, rates[i], jnp.int32(1))
    for b, a in zip(both, alone):
      np.testing.assert_array_equal(b[i], a)


@needs_kernel
@pytest.mark.parametrize('overrides', [
    dict(sparsity=30.0), pytest.param(dict(reg_subset=1), marks=pytest.mark.slow)])
def test_training_with_the_kernel_matches_xla_adam(synthetic_task_set, monkeypatch, overrides):
  """Three tasks of a small HyperMask program, each Adam path: the same parameters, task 1
  (one live row) to the bit, later tasks within rounding; the same one trace of the step."""
  config = tiny_config(**overrides)
  results = {}
  for choice in ('ffi', 'xla'):
    monkeypatch.setenv('HYPERMASK_FACTORED_ADAM', choice)
    trainer = trainer_lib.Trainer(config, HyperMask(config, synthetic_task_set.input_shape,
                                                    synthetic_task_set.num_classes))
    state, data, hp = fresh_program(trainer, synthetic_task_set)
    params = []
    for task in range(3):
      state = trainer.begin_task(state, task, hp)
      while int(state.step) < config.steps_per_task:
        state = run_chunk(trainer, state, data, hp)
      params.append(jax.device_get(state.params))
    assert trainer.traces['train_step'] == 1
    hlo = trainer.train_steps.lower(state, data, hp, np.int32(1)).compile().as_text()
    assert (factored_adam.TARGET in hlo) == (choice == 'ffi')
    kernel = 'f32[%s]' % ','.join(map(str, state.params['hnet']['out']['kernel'].shape))
    copies = [line for line in hlo.splitlines()  # the kernel is updated in place
              if re.search(r'= %s(\{[0-9,]*\})? copy\(' % re.escape(kernel), line)]
    assert not copies, copies
    results[choice] = params
  for task, (ffi, xla) in enumerate(zip(results['ffi'], results['xla'])):
    for a, b in zip(jax.tree.leaves(ffi), jax.tree.leaves(xla)):
      if task == 0:
        np.testing.assert_array_equal(a, b)
      else:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_kernel_that_cannot_be_built_falls_back_to_xla(monkeypatch, tmp_path):
  """No compiler: `xla`, with the reason; forcing `ffi` then stops a run before it starts."""
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setattr(factored_adam, 'CACHE', str(tmp_path / 'kernels'))
  factored_adam._library.cache_clear()
  factored_adam.unavailable_reason.cache_clear()
  try:
    if jax.default_backend() == 'cpu':
      assert factored_adam.unavailable_reason().startswith('compiling it failed (')
    assert backend.factored_adam() == 'xla'
    monkeypatch.setenv('HYPERMASK_FACTORED_ADAM', 'ffi')
    for check in (backend.factored_adam, backend.check_environment):  # a run checks at its start
      with pytest.raises(backend.BadVariable, match='^HYPERMASK_FACTORED_ADAM=ffi: its CPU '
                         'kernel cannot run here: '):
        check()
  finally:
    factored_adam._library.cache_clear()
    factored_adam.unavailable_reason.cache_clear()


@needs_kernel
@pytest.mark.slow
def test_the_kernel_source_compiles_without_warnings(tmp_path):
  """The flags the library builds with, and -Wall -Wextra: the source stays clean (the XLA
  headers, included as system headers, are not checked)."""
  run = subprocess.run([os.environ.get('CXX', 'g++'), *factored_adam.FLAGS, '-Wall', '-Wextra', '-Werror', '-isystem',
                        jax.ffi.include_dir(), str(factored_adam.SOURCE), '-o',
                        str(tmp_path / 'k.so')], capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
