"""HNET: the lookahead step, the random subset of old tasks, current-embedding-only training."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import hnet_permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import layers
from hypermask_jax import layout
from hypermask_jax import regularizers
from hypermask_jax import targets
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.methods.hnet import HNET
from tests.conftest import fresh_program
from tests.conftest import needs_cpu_kernels
from tests.conftest import normals
from tests.conftest import run_chunk


def tiny_config(**overrides):
  config = hnet_permuted_mnist.get_config('small')
  config.update(dict(num_tasks=4, target_hidden=(16,), hnet_hidden=(8,), embedding_size=4,
                     chunk_size=300, batch_size=32, steps_per_task=5, log_every_steps=5,
                     eval_batch_size=64))
  config.update(overrides)
  return config_checks.resolve(config)


def method_and_batch(data, config):
  method = HNET(config, data.input_shape, data.num_classes)
  images, labels = data.train.images[:32], data.train.labels[:32]
  x = data.inputs(images, 1, None, train=False)
  return method, (x, labels, jnp.int32(1))


def test_generates_every_target_weight_and_every_tasks_head(synthetic_task_set):
  config = tiny_config()  # output_heads='per_task': 4 heads of 10 in one output layer
  method, (x, _, _) = method_and_batch(synthetic_task_set, config)
  params = jax.jit(method.init_params)(jax.random.key(0))
  assert set(params) == {'hnet'}  # the target has no weights of its own
  weights = jax.jit(method.eval_weights)(params, jnp.int32(2), None)
  assert sum(w.size for w in jax.tree.leaves(weights)) == 1024 * 16 + 16 + 16 * 40 + 40
  counts = method.param_counts(params)
  assert counts['compression'] == counts['hnet'] / counts['target']
  # Task t reads its own slice of the 40 outputs.
  hidden = jax.nn.relu(x @ weights['dense_0']['weight'].T + weights['dense_0']['bias'])
  all_heads = hidden @ weights['head']['weight'].T + weights['head']['bias']
  np.testing.assert_allclose(jax.jit(method.predict)(weights, {}, x, jnp.int32(2)),
                             all_heads[:, 20:30], rtol=1e-5, atol=1e-5)


def test_one_task_for_the_batch_multiplies_only_its_head_and_changes_no_number():
  """targets.Head: a scalar task (the published steps) against the same task given per
  example (joint training's path, every head computed), in value and gradient; its params are
  nn.Dense's with PyTorch's init, as before it existed, laid out as nn.Linear's [out, in]."""
  target = targets.MLP(hidden=(12,), num_classes=4, num_heads=3)
  params = jax.jit(target.init)(jax.random.key(0), jnp.zeros((1, 20)))['params']

  class Before(nn.Module):  # the output layer as it was: torch_dense, every head, then picked
    @nn.compact
    def __call__(self, x):
      x = nn.relu(layers.torch_dense(12, 20, name='dense_0')(x))
      return layers.torch_dense(12, 12, name='head')(x)

  before = jax.jit(Before().init)(jax.random.key(0), jnp.zeros((1, 20)))['params']
  for name in ('dense_0', 'head'):
    np.testing.assert_array_equal(params[name]['weight'], before[name]['kernel'].T)
    np.testing.assert_array_equal(params[name]['bias'], before[name]['bias'])
  x, = normals(2, (6, 20))
  y = jnp.array([0, 1, 2, 3, 0, 1])

  def loss(params, tasks):
    logits = target.apply({'params': params}, x, tasks)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  for task in range(3):
    (want, want_logits), want_grad = value_and_grad(params, jnp.full((6,), task, jnp.int32))
    (got, got_logits), got_grad = value_and_grad(params, jnp.int32(task))
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    head_grad = np.asarray(got_grad['head']['weight'])
    assert np.all(np.delete(head_grad, np.s_[4 * task:4 * task + 4], axis=0) == 0)
    assert np.abs(head_grad).max() > 0
    for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def flat_output_loss(target):
  """(loss(target, flat, tasks) -> (CE, logits) of a batch with the weights a flat hypernetwork
  output [P] holds, a flat output): for an MLP of two hidden layers and 3 heads of 4 classes."""
  shapes = jax.eval_shape(target.init, jax.random.key(0), jnp.zeros((1, 20)))['params']
  flat_layout = layout.Layout.of(shapes, layout.is_weight)
  x, = normals(2, (6, 20))
  y = jnp.array([0, 1, 2, 3, 0, 1])

  def loss(target, flat, tasks):
    logits = target.apply({'params': flat_layout.unflatten(flat_layout.split(flat))}, x, tasks)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  return loss, normals(1, (flat_layout.size,))[0]


def test_a_target_from_a_flat_output_equals_the_dense_layers_written_out():
  """A target whose weights a flat output holds (HNET's) equals, in value and gradient, the
  same MLP written with each [out, in] tensor cut from the flat output as PyTorch's
  nn.Linear reads it (x @ W^T + b): layout.split hands the tensors over without reordering."""
  target = targets.MLP(hidden=(12, 9), num_classes=4, num_heads=3)
  loss, flat = flat_output_loss(target)
  x, = normals(2, (6, 20))  # flat_output_loss's batch
  y = jnp.array([0, 1, 2, 3, 0, 1])

  def written_out(flat):
    sizes = np.cumsum([12 * 20, 12, 9 * 12, 9, 12 * 9])
    w0, b0, w1, b1, w2, b2 = jnp.split(flat, sizes)
    h = jax.nn.relu(x @ w0.reshape(12, 20).T + b0)
    h = jax.nn.relu(h @ w1.reshape(9, 12).T + b1)
    logits = (h @ w2.reshape(12, 9).T + b2)[:, 4:8]  # task 1's head
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  (want, want_logits), want_grad = jax.value_and_grad(written_out, has_aux=True)(flat)
  (got, got_logits), got_grad = jax.jit(jax.value_and_grad(
      lambda flat: loss(target, flat, jnp.int32(1)), has_aux=True))(flat)
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(jnp.abs(want_grad).max()) > 0
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-7)


def test_a_generated_heads_gradient_is_written_in_the_hypernetworks_layout_without_a_copy():
  """targets.Head slices its [out, in] weight on its rows: the compiled gradient of the flat
  output has no transpose or copy of the head's weight (sliced on the columns of an [in, out]
  kernel, it had both), and equals the gradient of every head computed."""
  target = targets.MLP(hidden=(12, 9), num_classes=4, num_heads=3)
  loss, flat = flat_output_loss(target)
  grad = jax.grad(lambda flat, tasks: loss(target, flat, tasks)[0])
  hlo = jax.jit(grad).lower(flat, jnp.int32(1)).compile().as_text()
  head_copies = re.findall(r'f32\[(?:12,9|9,12)\][^ ]* (?:transpose|copy)\(', hlo)
  assert not head_copies, head_copies
  np.testing.assert_allclose(jax.jit(grad)(flat, jnp.int32(1)), grad(flat, jnp.ones(6, jnp.int32)),
                             rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('form', ['direct', pytest.param('ffi', marks=needs_cpu_kernels)])
def test_a_chunked_hypernetworks_tensors_are_cut_from_its_chunks_without_a_pass_over_the_output(
    synthetic_task_set, monkeypatch, form):
  """task_tensors: a chunked hypernetwork's tensors cut from its chunks' outputs. They and the
  CE's gradient equal those cut from hnet_outputs' [P] row (the same to the bit with XLA's
  products; within float rounding with the CPU kernels, which write the tensors themselves).
  The compiled gradient holds no pad of the output's gradient back to the chunks' size (a pass
  over the output that cutting to P first costs), and with the kernels no concatenation of the
  tensors' gradients either."""
  monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', form)
  config = tiny_config()
  method, (x, y, _) = method_and_batch(synthetic_task_set, config)
  params = method.init_params(jax.random.key(0))
  task = jnp.int32(1)
  chunks = method.hnet.num_chunks * config.chunk_size
  assert chunks > method.layout.size
  forms = {'tensors': lambda p: method.task_tensors(p, task),
           'cut': lambda p: method.layout.split(method.hnet_outputs(p, task[None])[0])}
  close = ((lambda a, b: np.testing.assert_array_equal(a, b)) if form == 'direct' else
           (lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)))
  jax.tree.map(close, forms['tensors'](params['hnet']), forms['cut'](params['hnet']))

  def ce(params, tensors):
    logits = method.predict(method.layout.unflatten(tensors(params['hnet'])), {}, x, task)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grads = {name: jax.jit(jax.grad(lambda p, f=f: ce(p, f))) for name, f in forms.items()}
  hlo = {name: g.lower(params).compile().as_text() for name, g in grads.items()}
  pads = {name: re.findall(rf'f32\[(?:1,)?{chunks}\]\S* pad\(', text) for name, text in hlo.items()}
  assert pads['cut'] and not pads['tensors'], pads
  joined = re.findall(rf'f32\[(?:1,)?(?:{chunks}|{method.layout.size})\]\S* concatenate\(',
                      hlo['tensors'])
  assert bool(joined) == (form == 'direct'), joined
  jax.tree.map(close, grads['tensors'](params), grads['cut'](params))


@pytest.mark.slow
def test_gradient_is_the_task_gradient_plus_the_regulariser_at_the_lookahead_point(
    synthetic_task_set):
  config = tiny_config(lookahead=True)
  method, batch = method_and_batch(synthetic_task_set, config)
  start = method.init_params(jax.random.key(0))
  memory = method.begin_task(start)
  params = jax.tree.map(lambda p: p + 0.01, start)  # the outputs have left their targets
  hp = trainer_lib.run_hyperparams(config)
  tx = optax.adam(1e-3)
  task, rng = jnp.int32(2), jax.random.key(1)
  grads, metrics, _ = jax.jit(lambda p: method.gradients(
      p, {}, tx.init(p), tx, batch, task, 0, memory, hp, rng))(params)

  def ce(p):
    weights = method.eval_weights(p, task, hp)
    logits = method.predict(weights, {}, batch[0], task)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  def reg(p):  # a plain loop over the previous tasks 0 and 1, against the start's outputs
    output = lambda p, j: method.hnet_outputs(p['hnet'], jnp.array([j]))[0]
    return sum(jnp.sum((output(p, j) - output(start, j)) ** 2) for j in range(2)) / 2

  only_current = lambda g: {'hnet': {**g['hnet'], 'embeddings': g['hnet']['embeddings'].at[
      jnp.array([0, 1, 3])].set(0)}}
  task_grads = only_current(jax.grad(ce)(params))
  # Adam's first step by hand: m_hat = g, v_hat = g^2, so the step is -lr * g / (|g| + eps).
  lookahead = jax.tree.map(lambda p, g: p - 1e-3 * g / (jnp.abs(g) + 1e-8), params, task_grads)
  reg_grads = only_current(jax.grad(reg)(lookahead))
  expected = jax.tree.map(lambda g, r: g + config.beta * r, task_grads, reg_grads)
  np.testing.assert_allclose(metrics['reg'], reg(lookahead), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], ce(params) + config.beta * reg(lookahead), rtol=1e-5)
  assert float(jnp.abs(reg_grads['hnet']['out']['kernel']).max()) > 0
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_random_subset_picks_only_seen_tasks():
  for task in range(1, 20):
    for seed in range(5):
      rows, seen = regularizers.previous_rows(jnp.int32(task), 4, jax.random.key(seed), 20)
      rows, seen = np.asarray(rows), np.asarray(seen)
      assert len(set(rows.tolist())) == 4  # without replacement
      assert seen.sum() == min(task, 4)
      assert np.all(rows[seen] < task)
  picked = {int(r) for s in range(50) for r in regularizers.previous_rows(
      jnp.int32(10), 3, jax.random.key(s), 20)[0]}
  assert picked == set(range(10))  # every seen task gets its turn


@pytest.mark.slow
def test_snapshot_targets_equal_stored_targets(synthetic_task_set):
  losses = []
  for reg_targets in ('stored', 'snapshot'):
    config = tiny_config(reg_targets=reg_targets)
    method, batch = method_and_batch(synthetic_task_set, config)
    params = method.init_params(jax.random.key(0))
    memory = method.begin_task(params)
    moved = jax.tree.map(lambda p: p + 0.01, params)
    reg, _ = regularizers.output_reg_and_grad(method._distances_fn(memory),
                                              lambda: moved['hnet'], moved['hnet'], 1.0,
                                              jnp.int32(3), (3,))
    losses.append(reg)
  assert float(losses[0]) > 0
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


@pytest.mark.slow
def test_current_embedding_only_leaves_previous_ones_bit_identical(synthetic_task_set):
  data = synthetic_task_set
  for train_embeddings, previous_move in (('current', False), ('all', True)):
    config = tiny_config(train_embeddings=train_embeddings, num_tasks=3)
    trainer = trainer_lib.Trainer(config, HNET(config, data.input_shape, data.num_classes))
    state, program_data, hp = fresh_program(trainer, data)
    for task in range(2):
      state = trainer.begin_task(state, task, hp)
      state = run_chunk(trainer, state, program_data, hp)
    before = np.asarray(state.params['hnet']['embeddings'][0])
    state = trainer.begin_task(state, 2, hp)
    state = run_chunk(trainer, state, program_data, hp)
    after = np.asarray(state.params['hnet']['embeddings'][0])
    assert not np.array_equal(after[2], before[2])
    assert np.array_equal(after[:2], before[:2]) != previous_move
    assert trainer.traces == {'init_state': 1, 'begin_task': 1, 'train_steps': 1, 'train_step': 1,
                              'end_chunk': 1}


@pytest.mark.slow
def test_hundred_tasks_compile_once_with_constant_memory():
  from configs import hnet_permuted_mnist_100  # pylint: disable=g-import-not-at-top
  from experiments import long_sequence  # pylint: disable=g-import-not-at-top
  memory, traces = long_sequence.run(hnet_permuted_mnist_100.get_config('small'), steps=2)
  assert len(memory) == 100
  assert traces == {'init_state': 1, 'begin_task': 1, 'train_steps': 1, 'train_step': 1,
                    'evaluate_test': 1}
  # Allocator pools settle over the first tasks; after that the floor does not grow (readings
  # taken while transient evaluation buffers are alive sit up to ~40 MB above it).
  assert min(memory[90:]) - min(memory[50:60]) < 16 * 2**20, [m // 2**20 for m in memory[::5]]
