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
