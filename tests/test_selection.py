"""Model selection per task by validation loss (the Tiny ImageNet configs use it)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.methods.hypermask import HyperMask
from tests.conftest import fresh_program
from tests.conftest import epochs_with_a_ruinous_last
from tests.conftest import run_chunk
from tests.conftest import with_learning_rate


def val_loss_by_hand(method, params, data, hp):
  """Mean cross-entropy of task 0's validation split, in one batch, outside the trainer."""
  size, offset = int(data.val.size[0]), int(data.val.offset[0])
  x = data.inputs(data.val.images[offset:offset + size], 0, None, train=False)
  logits = method.predict(method.eval_weights(params, jnp.int32(0), hp), {}, x, 0)
  return float(optax.softmax_cross_entropy_with_integer_labels(
      logits, data.val.labels[offset:offset + size]).mean())


@pytest.mark.slow
def test_the_task_keeps_the_parameters_of_its_lowest_validation_loss(synthetic_task_set):
  data = synthetic_task_set
  config = permuted_mnist.get_config('small')
  config.update(num_tasks=1, target_hidden=(16,), hnet_hidden=(8,), embedding_size=4,
                batch_size=32, steps_per_task=None, epochs_per_task=3, selection='best_val_loss')
  config = config_checks.fit_to_data(config_checks.resolve(config), data)
  method = HyperMask(config, data.input_shape, data.num_classes)
  trainer = trainer_lib.Trainer(config, method)
  state, program_data, hp = fresh_program(trainer, data)
  state = trainer.begin_task(state, 0, hp)
  state, losses, snapshots = epochs_with_a_ruinous_last(trainer, state, program_data, hp,
                                                        'val_loss')
  run_params = lambda p: jax.tree.map(lambda x: x[0], p)
  one_hp = jax.tree.map(lambda x: x[0], hp)
  np.testing.assert_allclose(losses[1], val_loss_by_hand(method, run_params(snapshots[1]), data,
                                                         one_hp), rtol=1e-4)
  best = int(np.argmin(losses))
  assert best < 2 and losses[2] > min(losses), losses
  assert float(state.schedule['best_val_loss'][0]) == min(losses)
  for got, want in zip(jax.tree.leaves(snapshots[2]), jax.tree.leaves(snapshots[best])):
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize('selection', ['best_val', 'best_val_loss'])
def test_checks_within_an_epoch_keep_the_best_step_as_a_plain_loop_finds_it(synthetic_task_set,
                                                                          selection):
  """selection_every_steps=5 over 2 epochs of 16 steps checks after steps 1, 6, 11, 16 (the
  epoch's end), 21, 26, 31 and 32. From step 12 on the rate is 10, which ruins the network, so
  the best is within the first epoch; the task must end with the parameters of that step, as a
  loop of one-step calls that evaluates each of those steps by hand finds it."""
  data = synthetic_task_set
  config = permuted_mnist.get_config('small')
  config.update(num_tasks=1, target_hidden=(16,), hnet_hidden=(8,), embedding_size=4,
                batch_size=32, learning_rate=1e-2, steps_per_task=None, epochs_per_task=2,
                selection=selection, selection_every_steps=5)
  config = config_checks.fit_to_data(config_checks.resolve(config), data)
  method = HyperMask(config, data.input_shape, data.num_classes)
  trainer = trainer_lib.Trainer(config, method)
  assert (trainer.chunk, config.steps_per_task) == (16, 32)
  state, program_data, hp = fresh_program(trainer, data)
  start = trainer.begin_task(state, 0, hp)
  one_hp = jax.tree.map(lambda x: x[0], hp)

  # The plain loop: one step per call, every check step evaluated outside the trainer.
  state, scores = jax.tree.map(jnp.copy, start), {}
  for step in range(1, 33):
    state, _ = trainer.train_steps(state, program_data, hp, np.int32(1))
    if step == 11:
      state = with_learning_rate(state, 10.0)
    if step in (1, 6, 11, 16, 21, 26, 31, 32):
      params = jax.device_get(state.params)
      run_params = jax.tree.map(lambda x: x[0], params)
      hits = int(trainer.evaluate(state.params, state.batch_stats, program_data, 'val', 0, hp)[0])
      score = hits if selection == 'best_val' else -val_loss_by_hand(method, run_params, data,
                                                                     one_hp)
      scores[step] = (score, params)
    if step % 16 == 0:
      state = trainer.end_chunk(state, program_data, hp)
  best = max(scores, key=lambda s: (scores[s][0], -s))  # the first of the highest
  assert best in (1, 6, 11), {s: v[0] for s, v in scores.items()}

  # The run as the host loop calls it: calls of several steps, the checks inside them.
  state = trainer.train_steps(start, program_data, hp, np.int32(11))[0]
  state = with_learning_rate(state, 10.0)
  state = trainer.train_steps(state, program_data, hp, np.int32(5))[0]
  state = trainer.end_chunk(state, program_data, hp)
  state = run_chunk(trainer, state, program_data, hp)
  assert int(state.step) == 32
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(scores[best][1])):
    np.testing.assert_array_equal(got, want)
  assert trainer.traces['train_steps'] == 1
