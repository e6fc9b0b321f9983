"""The CPU Adam kernel for a factored gradient (factored_adam.py) against optax's update."""

from functools import partial
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hypermask_jax import backend
from hypermask_jax import cpu_kernels
from hypermask_jax import factored_adam
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.methods.hypermask import HyperMask
from tests.conftest import fresh_program
from tests.conftest import needs_cpu_kernels
from tests.conftest import run_chunk
from tests.test_train import tiny_config

def optax_step(grad, params, mu, nu, rate, count):
  """optax.adam's step on the gradient as wide_dense writes it for XLA to fuse into the step:
  the sum of the rows' outer products, the rows from `live` on zeros."""
  x = jnp.where((jnp.arange(grad.x.shape[0]) < grad.live)[:, None], grad.x, 0.0)
  ct = grad.ct()
  dense = sum(ct[i][:, None] * x[i][None, :] for i in range(x.shape[0]))
  tx = optax.adam(rate)
  state = (optax.ScaleByAdamState(count=count, mu=mu, nu=nu), optax.EmptyState())
  updates, (adam, _) = tx.update(dense, state, params)
  return optax.apply_updates(params, updates), adam.mu, adam.nu


def kernel_step(grad, params, mu, nu, rate, count):
  tx = trainer_lib.optimizer(rate)
  state = (optax.ScaleByAdamState(count=count, mu={'k': mu}, nu={'k': nu}), optax.EmptyState())
  new_params, (adam, _) = factored_adam.apply(tx, rate, {'k': grad}, state, {'k': params})
  return new_params['k'], adam.mu['k'], adam.nu['k']


def no_layers_before(d_x):
  """A FactoredGradient's backprop for a layer whose input is not a parameter's function."""
  del d_x
  return {}


def random_step_inputs(rng, rows, live, m=5003, n=37):
  """A FactoredGradient with rows [rows, m] x [rows, n] (live of them in use) and a state; m
  leaves the kernel's last tile of rows part full."""
  ct0, ct_rows, ct_scale, x, p, mu, nu = (
      rng.standard_normal(s).astype(np.float32)
      for s in [(m,), (rows - 1, m), (rows - 1,), (rows, n), (m, n), (m, n), (m, n)])
  grad = factored_adam.FactoredGradient(
      jnp.asarray(ct0), jnp.asarray(ct_rows), jnp.asarray(ct_scale), jnp.asarray(x),
      jnp.int32(live), jax.tree_util.Partial(no_layers_before))
  return grad, jnp.asarray(p), jnp.asarray(0.1 * mu), jnp.asarray(0.01 * nu * nu)


def input_gradient(grad, params, mu, nu, rate, count):
  """The kernel's d_x, from the same call as its update."""
  return factored_adam.update(grad, params, mu, nu, rate, count)[3]


@needs_cpu_kernels
@pytest.mark.parametrize('rows,live,count', [(1, 1, 0), (4, 1, 3), (4, 3, 0), (10, 10, 7),
                                             (3, 0, 2)])
def test_the_kernel_is_optax_adam_on_the_dense_gradient(rows, live, count):
  """Each of p, mu, nu to optax's on the gradient as the XLA step forms it: to the bit with at
  most one live row, within the sum's last bits with more. The input gradient of the same call:
  the live rows of ct times the kernel before the update, to float rounding, the others 0."""
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
  d_x = np.asarray(jax.jit(input_gradient)(*args))
  want = np.zeros(d_x.shape)
  want[:live] = np.asarray(grad.ct()[:live], np.float64) @ np.asarray(p, np.float64)
  np.testing.assert_allclose(d_x, want, rtol=0, atol=1e-5 * np.abs(want).max(initial=1.0))
  np.testing.assert_array_equal(d_x[live:], 0.0)


@needs_cpu_kernels
def test_the_kernel_takes_each_runs_own_rows_rate_and_live_count_under_vmap():
  rng = np.random.default_rng(0)
  runs = [random_step_inputs(rng, 3, live) for live in (1, 3)]
  rates = jnp.asarray([1e-3, 3e-2], jnp.float32)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *runs)
  both = jax.jit(jax.vmap(kernel_step, in_axes=(0, 0, 0, 0, 0, None)))(
      *stacked, rates, jnp.int32(1))
  both_d_x = jax.jit(jax.vmap(input_gradient, in_axes=(0, 0, 0, 0, 0, None)))(
      *stacked, rates, jnp.int32(1))
  for i, run in enumerate(runs):
    alone = jax.jit(kernel_step)(*run, rates[i], jnp.int32(1))
    for b, a in zip(both, alone):
      np.testing.assert_array_equal(b[i], a)
    np.testing.assert_array_equal(both_d_x[i], jax.jit(input_gradient)(*run, rates[i],
                                                                       jnp.int32(1)))


@needs_cpu_kernels
@pytest.mark.slow  # whole tasks, twice; the kernel's unit tests above are in the fast loop
@pytest.mark.parametrize('overrides', [dict(sparsity=30.0), dict(reg_subset=1)])
def test_training_with_the_kernel_matches_xla_adam(synthetic_task_set, monkeypatch, overrides):
  """Three tasks of a small HyperMask program, each Adam path: the same parameters within
  rounding (the kernel sums the input gradient in another order than XLA) at the first task,
  close after it; the same one trace of the step."""
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
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      else:  # a few entries have a regularised residual within rounding of 0: Adam's steps
        # (about lr, in the residual's direction) take them apart by up to a few lr
        assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b)


@pytest.mark.parametrize('task', [0, 1])
def test_factored_gradients_are_the_dense_ones(synthetic_task_set, task):
  """HyperMask's factored gradients, made dense by hand (the kernel's ct^T @ x over the live
  rows, the other layers' from backprop of d_x = ct's live rows times the kernel), equal the
  plain gradients to float rounding: at the first task, and at the second with the first
  regularised."""
  config = tiny_config()
  data = synthetic_task_set
  method = HyperMask(config, data.input_shape, data.num_classes)
  params = jax.jit(method.init_params)(jax.random.key(0))
  memory = jax.jit(method.begin_task)(jax.tree.map(lambda p: p - 0.01, params))  # targets moved
  x = data.inputs(data.train.images[:32], task, None, train=False)
  batch, hp = (x, data.train.labels[:32], task), trainer_lib.run_hyperparams(config)
  tx = optax.adam(1e-3)

  def gradients(factored):
    return method.gradients(params, {}, tx.init(params), tx, batch, jnp.int32(task), 0, memory,
                            hp, jax.random.key(1), factored=factored)[0]

  want = jax.jit(lambda: gradients(False))()
  factored = jax.jit(lambda: gradients(True))()
  grad = factored['hnet']['out']['kernel']
  live = int(grad.live)
  assert live == 1 + task and grad.ct().shape[0] > live  # rows past live are left out

  @jax.jit
  def dense_by_hand(factored):  # the kernel's product over the live rows, the rest by backprop
    grad = factored['hnet']['out']['kernel']
    ct = grad.ct()
    d_x = jnp.zeros_like(grad.x).at[:live].set(ct[:live] @ params['hnet']['out']['kernel'])
    rest = {**factored, 'hnet': {**factored['hnet'], 'out': {
        **factored['hnet']['out'], 'kernel': ct[:live].T @ grad.x[:live]}}}
    return factored_adam._add(rest, grad.backprop(d_x))

  got = dense_by_hand(factored)
  assert float(jnp.abs(want['hnet']['dense_0']['kernel']).max()) > 0
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.abs(w).max()),
                               err_msg=jax.tree_util.keystr(path))


def test_the_kernel_flop_count():
  """By hand with three rows in use (5 + 6 + 14 per entry); with one, XLA's own count of the same
  step written with jax.numpy (optax's update, the gradient's product and x's)."""
  m, n = 1000, 30
  assert factored_adam.flops(m, n, 3) == m * n * 25

  def dense_step(ct, x, p, mu, nu):
    tx = optax.adam(1e-3)
    state = (optax.ScaleByAdamState(count=jnp.int32(3), mu=mu, nu=nu), optax.EmptyState())
    updates, (adam, _) = tx.update(ct.T * x, state, p)  # one row: [m, 1] * [1, n]
    return optax.apply_updates(p, updates), adam.mu, adam.nu, ct @ p

  shapes = [(1, m), (1, n), (m, n), (m, n), (m, n)]
  cost = jax.jit(dense_step).lower(*[jnp.ones(s) for s in shapes]).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert factored_adam.flops(m, n, 1) == cost['flops']


def adam_step(grads, params, mu, nu, rate, count, kernels):
  tx = trainer_lib.optimizer(rate)
  state = (optax.ScaleByAdamState(count=count, mu=mu, nu=nu), optax.EmptyState())
  new_params, (adam, _) = factored_adam.apply(tx, rate, grads, state, params, kernels=kernels)
  return new_params, adam.mu, adam.nu


@needs_cpu_kernels
@pytest.mark.parametrize('vmapped', [False, True])
def test_the_dense_kernel_is_optax_adam(vmapped):
  """With `kernels`, the leaves of at least DENSE_MIN_SIZE entries (here 'big', and not
  'small') go to DenseAdam: mu and nu equal optax's to the bit, p within the rounding of its
  last multiply-add (in 0.1% of the entries XLA's compiled loop rounds the product lr * step
  apart), for one run and under vmap (each run with its own rate)."""
  rng = np.random.default_rng(0)
  big = (factored_adam.DENSE_MIN_SIZE // 1000 + 1, 1000)
  def tree(scale):
    return {'big': jnp.asarray(scale(rng.standard_normal(big)), jnp.float32),
            'small': jnp.asarray(scale(rng.standard_normal(37)), jnp.float32)}
  args = (tree(lambda a: a), tree(lambda a: a), tree(lambda a: 0.1 * a),
          tree(lambda a: 0.01 * a * a), jnp.float32(1e-3), jnp.int32(4))
  runs = 2 if vmapped else None
  if vmapped:
    args = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), args[:5]) + args[5:]
  steps = [jax.vmap(partial(adam_step, kernels=k), in_axes=(0, 0, 0, 0, 0, None)) if runs
           else partial(adam_step, kernels=k) for k in (True, False)]
  compile_options = backend.compiler_options('hypermask')
  hlo = jax.jit(steps[0]).lower(*args).as_text()
  assert hlo.count(cpu_kernels.TARGETS['DenseAdam']) == 1
  got, want = (jax.jit(step, compiler_options=compile_options)(*args) for step in steps)
  assert float(jnp.abs(got[0]['big'] - args[1]['big']).max()) > 1e-4  # the step moved them
  for g, w in zip(jax.tree.leaves(got[1:]), jax.tree.leaves(want[1:]), strict=True):
    np.testing.assert_array_equal(g, w)
  for g, w in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0]), strict=True):
    np.testing.assert_allclose(g, w, rtol=2.4e-7, atol=1e-9)  # an ulp of p and of lr * step
