"""The batched output regulariser equals a plain loop over previous tasks; L1 drift by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypermask_jax import hypernet
from hypermask_jax import regularizers
from tests.conftest import normals


def test_bucket_sizes():
  assert regularizers.row_sizes(10) == (0, 1, 2, 4, 8, 9)
  assert regularizers.row_sizes(1) == (0,)
  assert regularizers.row_sizes(2) == (0, 1)
  assert regularizers.row_sizes(100) == (0, 1, 2, 4, 8, 16, 32, 64, 99)
  assert regularizers.row_sizes(10, subset=4) == (0, 4)
  # A full hypernetwork computes every previous task's row (or the subset's) at every step.
  assert regularizers.row_sizes(10, bucketed=False) == (9,)
  assert regularizers.row_sizes(1, bucketed=False) == (0,)
  assert regularizers.row_sizes(100, subset=32, bucketed=False) == (32,)


HNETS = {'hmlp': lambda max_tasks: hypernet.HMLP(num_outputs=37, max_tasks=max_tasks,
                                                  embedding_size=5, hidden=(7,)),
         'chunked': lambda max_tasks: hypernet.ChunkedHMLP(
             num_outputs=37, max_tasks=max_tasks, embedding_size=5, hidden=(7,), chunk_size=10,
             chunk_embedding_size=3)}


@pytest.mark.parametrize('hnet', list(HNETS))
@pytest.mark.parametrize('bucketed', [True, False])
# 6 tasks (buckets 1, 2, 4, 6) and 10 (1, 2, 4, 8, 10), each ending in a bucket that is not a
# power of two, in the full suite only.
@pytest.mark.parametrize('max_tasks', [1, pytest.param(6, marks=pytest.mark.slow),
                                       pytest.param(10, marks=pytest.mark.slow)])
def test_batched_output_regulariser_equals_loop(max_tasks, bucketed, hnet):
  """Both forms, outputs_and_output_reg and output_reg_and_grad, with their gradients."""
  model = HNETS[hnet](max_tasks)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1,), jnp.int32))['params']
  targets, probe = normals(1, (max_tasks, 37), (37,))
  apply = jax.jit(lambda p, t, live_rows=None: model.apply({'params': p}, t, live_rows))
  hnet_fn = lambda t, live_rows=None: apply(params, t, live_rows)
  with_targets = lambda p: lambda t, live_rows, rows: model.apply({'params': p}, t, live_rows,
                                                                  (targets, rows))
  buckets = regularizers.row_sizes(max_tasks, bucketed=bucketed)
  fn = jax.jit(lambda t: regularizers.outputs_and_output_reg(with_targets(params), t, buckets))
  # The gradient of a loss on the current output and the regulariser, against the loop's.
  loss = lambda out, reg: jnp.sum(jnp.tanh(out) * probe) + 3.0 * reg
  loss_grad = jax.jit(jax.grad(lambda p, t: loss(*regularizers.outputs_and_output_reg(
      with_targets(p), t, buckets))))
  # A gradient to add to (as HNET's task gradient), scaled as by beta.
  leaves, tree = jax.tree.flatten(params)
  base = jax.tree.unflatten(tree, normals(2, *(p.shape for p in leaves)))
  distances = lambda p, rows: jnp.sum(jnp.square(apply(p, rows) - targets[rows]), 1)
  with_grad = jax.jit(lambda t: regularizers.output_reg_and_grad(
      distances, lambda: params, base, 0.5, t, buckets))
  for task in range(max_tasks):
    out, reg = fn(jnp.int32(task))
    loop = [float(jnp.sum((hnet_fn(jnp.array([j]))[0] - targets[j]) ** 2)) for j in range(task)]
    expected = float(np.mean(loop)) if loop else 0.0
    np.testing.assert_allclose(float(reg), expected, rtol=1e-5)
    np.testing.assert_allclose(out, hnet_fn(jnp.array([task]))[0], rtol=1e-5, atol=1e-6)
    loop_reg = lambda p, task=task: sum(
        jnp.sum((apply(p, jnp.array([j]))[0] - targets[j]) ** 2) for j in range(task)) / max(task, 1)
    want = jax.jit(jax.grad(lambda p: loss(apply(p, jnp.array([task]))[0], loop_reg(p))))(params)
    got = loss_grad(params, jnp.int32(task))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    reg, grads = with_grad(jnp.int32(task))
    np.testing.assert_allclose(float(reg), expected, rtol=1e-5)
    expected_grads = jax.tree.map(lambda b, r: b + 0.5 * r, base,
                                  jax.jit(jax.grad(loop_reg))(params))
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    if task == 0:  # nothing regularised: the gradient passes through unchanged
      for got, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base)):
        np.testing.assert_array_equal(got, b)


@pytest.mark.parametrize('bucketed', [True, False])
def test_regulariser_gradient_reaches_previous_embeddings_only_through_reg(bucketed):
  model = hypernet.HMLP(num_outputs=4, max_tasks=4, embedding_size=3, hidden=(5,))
  params = model.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))['params']
  targets = jnp.zeros((4, 4))
  buckets = regularizers.row_sizes(4, bucketed=bucketed)

  def reg(p, task):
    return regularizers.outputs_and_output_reg(
        lambda t, live_rows, rows: model.apply({'params': p}, t, live_rows, (targets, rows)),
        task, buckets)[1]
  grads = jax.jit(jax.grad(reg))(params, jnp.int32(2))['embeddings']
  assert np.all(np.abs(grads[:2]) > 0) and np.all(grads[2:] == 0)


def test_a_random_subset_keeps_the_hypernetworks_row_switch_across_runs():
  """With a random subset per run, each run's regulariser is the mean over its own subset, and
  the row count the hypernetwork gets comes from the task alone: vmapped over runs, its
  products stay a lax.switch (a count differing between runs would run every bucket)."""
  max_tasks, subset = 10, 3
  model = hypernet.HMLP(num_outputs=37, max_tasks=max_tasks, embedding_size=5, hidden=(7,))
  params = model.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))['params']
  targets, = normals(1, (max_tasks, 37))
  sizes = regularizers.row_sizes(max_tasks, subset, bucketed=False)

  def reg(rng, task):
    return regularizers.outputs_and_output_reg(
        lambda t, live_rows, rows: model.apply({'params': params}, t, live_rows, (targets, rows)),
        task, sizes, rng, max_tasks)[1]

  runs = jax.vmap(reg, in_axes=(0, None))
  keys, task = jax.random.split(jax.random.key(2), 2), jnp.int32(6)
  for key, got in zip(keys, jax.jit(runs)(keys, task)):
    rows, seen = regularizers.previous_rows(task, subset, key, max_tasks)
    assert np.all(seen)
    loop = [jnp.sum((model.apply({'params': params}, jnp.array([j]))[0] - targets[j]) ** 2)
            for j in rows]
    np.testing.assert_allclose(float(got), float(np.mean(loop)), rtol=1e-5)
  assert 'cond[' in str(jax.make_jaxpr(runs)(keys, task))


def test_l1_drift_by_hand():
  start = {'dense_0': {'kernel': jnp.array([[1.0, 2.0]]), 'bias': jnp.array([0.0])},
           'head': {'kernel': jnp.array([[1.0]]), 'bias': jnp.array([3.0])},
           'BatchNorm_0': {'scale': jnp.array([1.0])}}
  now = {'dense_0': {'kernel': jnp.array([[2.0, 0.0]]), 'bias': jnp.array([-1.0])},
         'head': {'kernel': jnp.array([[1.5]]), 'bias': jnp.array([1.0])},
         'BatchNorm_0': {'scale': jnp.array([9.0])}}
  masks = {'dense_0': {'kernel': jnp.array([[0.5, 0.25]]), 'bias': jnp.array([0.0])},
           'head': {'kernel': jnp.array([[2.0]]), 'bias': jnp.ones(())},
           'BatchNorm_0': {'scale': jnp.ones(())}}
  # unmasked: 1 + 2 + 1 + 0.5 + 2 (head bias); BatchNorm is not a weight.
  assert float(regularizers.l1_drift(now, start)) == pytest.approx(6.5)
  # masked: 0.5 + 0.5 + 0 + 1.0 + 2 (head bias, mask 1).
  assert float(regularizers.l1_drift(now, start, masks)) == pytest.approx(4.0)


def test_l1_drift_has_zero_gradient_where_the_weights_have_not_moved():
  """PyTorch's abs has gradient 0 at 0: the first step of a task must not move any weight."""
  start = {'dense_0': {'kernel': jnp.array([[1.0, -2.0]]), 'bias': jnp.array([0.5])},
           'head': {'kernel': jnp.array([[3.0]]), 'bias': jnp.array([0.0])}}
  masks = jax.tree.map(lambda w: jnp.full(w.shape, 0.7), start)
  for drift_masks in (None, masks):
    grads = jax.grad(regularizers.l1_drift, argnums=(0, 2) if drift_masks else 0)(
        start, start, drift_masks)
    for g in jax.tree.leaves(grads):
      np.testing.assert_array_equal(g, 0.0)
  moved = jax.tree.map(lambda w: w + jnp.where(w > 0.6, 0.25, -0.25), start)
  grads = jax.grad(regularizers.l1_drift)(moved, start, masks)
  np.testing.assert_allclose(grads['dense_0']['kernel'], [[0.7, -0.7]])  # sign(W - W0) * M
