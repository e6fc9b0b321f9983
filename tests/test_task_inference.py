"""Testing with the task inferred: entropy (HyperMask, hypercl) and FeCAM's Mahalanobis distance."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import split_mnist
from hypermask_jax import config_checks
from hypermask_jax import fecam
from hypermask_jax import targets
from hypermask_jax import task_inference
from hypermask_jax import train
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import tasks
from tests.conftest import synthetic_mnist
from tests.test_sweep import TOLERANCE

BLOCK = 255  # the synthetic digits: a bright 6x4 block at a place that depends on the digit


def test_entropy_picks_the_most_confident_seen_task_and_its_class():
  logits = jnp.array([[[0.0, 0.0], [5.0, 0.0], [0.0, 9.0]],    # task 0: flat, sure, surer
                      [[0.0, 3.0], [1.0, 0.0], [0.0, 0.0]],    # task 1: sure, unsure, flat
                      [[20.0, 0.0], [20.0, 0.0], [20.0, 0.0]]])  # task 2: surest, but not seen
  seen = jnp.array([True, True, False])
  chosen = task_inference.entropy_tasks(logits, seen)
  np.testing.assert_array_equal(chosen, [1, 0, 0])
  np.testing.assert_array_equal(task_inference.class_in_task(logits, chosen), [1, 0, 1])
  np.testing.assert_array_equal(task_inference.entropy_tasks(logits, jnp.ones(3, bool)), [2, 2, 2])


def numpy_statistics(features, labels, num_classes):
  """FeCAM's per-class statistics written out with numpy from the formulas (fecam.py)."""
  protos, precisions = [], []
  for c in range(num_classes):
    x = features[labels == c].astype(np.float64)
    cov = np.cov(x.T)
    for _ in range(2):
      off = cov - np.diag(np.diag(cov))
      cov = (cov + np.mean(np.diag(cov)) * np.eye(len(cov))
             + off[off != 0].mean() * (1 - np.eye(len(cov))))
    sd = np.sqrt(np.diag(cov))
    cov = cov / np.outer(sd, sd)
    protos.append(x.mean(0) / np.linalg.norm(x.mean(0)))
    precisions.append(np.linalg.pinv(cov + 1e-8))
  return np.array(protos), np.array(precisions)


def test_fecam_statistics_and_distances_follow_the_formulas():
  rs = np.random.RandomState(0)
  features = rs.gamma(2.0, 1.0, (40, 5)).astype(np.float32) + np.repeat(np.eye(5)[:2] * 3, 20, 0)
  labels = np.repeat([0, 1], 20)
  weight = np.ones(40, np.float32)
  padded = lambda a, v: np.concatenate([a, np.full((3, *a.shape[1:]), v, a.dtype)])
  stats = fecam.class_statistics(jnp.asarray(padded(features, 99.0)), jnp.asarray(padded(labels, 0)),
                                 jnp.asarray(padded(weight, 0.0)), 3)  # padding ignored
  protos, precisions = numpy_statistics(features, labels, 2)
  np.testing.assert_allclose(stats['prototype'][:2], protos, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['precision'][:2], precisions, rtol=2e-3, atol=2e-3)
  np.testing.assert_array_equal(stats['valid'], [True, True, False])  # class 2 has no samples
  test = rs.gamma(2.0, 1.0, (4, 5)).astype(np.float32)
  unit = test / np.linalg.norm(test, axis=1, keepdims=True)
  want = [[(u - p) @ a @ (u - p) for u in unit] for p, a in zip(protos, precisions)]
  got = fecam.distances(jnp.asarray(test), stats)
  np.testing.assert_allclose(got[:2], want, rtol=2e-3)
  assert np.isinf(got[2]).all()


class Lookup:
  """A stand-in method whose task t is a linear classifier of the input (weight t, bias t), so
  its penultimate features are the inputs themselves: tests can set each task's network."""

  def __init__(self, num_classes):
    self.target = targets.MLP(hidden=(), num_classes=num_classes)

  def eval_weights(self, params, task, hp):
    del hp
    return {'head': {'weight': params['weight'][task], 'bias': params['bias'][task]}}

  def predict(self, weights, batch_stats, x, tasks_, valid=None):
    del batch_stats, tasks_, valid
    return self.target.apply({'params': weights}, x)


def digit_pixels(digit):
  """The flat 28x28 positions of a synthetic digit's block (conftest.synthetic_mnist)."""
  image = np.zeros((28, 28), bool)
  r, c = divmod(digit, 5)
  image[4 + 10 * r:10 + 10 * r, 2 + 5 * c:6 + 5 * c] = True
  return image.ravel()


@pytest.fixture(scope='module')
def split_data():
  train_set, test_set = synthetic_mnist(n_train=1500, n_test=300, seed=4)
  return tasks.split_mnist(train_set, test_set, num_tasks=3, val_size=50)


def lookup_program(data, mode, confuse, runs=2):
  """(inference, params, hp, program data): task t's weight reads the blocks of its two digits;
  with `confuse`, task 2 also answers digit 0 (task 0's class 0) with twice the weight."""
  config = split_mnist.get_config('small')
  config.update(num_tasks=3, task_inference=mode, eval_batch_size=64)
  config = config_checks.resolve(config)
  trainer = trainer_lib.Trainer(config, Lookup(2))
  weight = np.zeros((3, 2, 784), np.float32)  # [task, out, in]
  for t in range(3):
    for c in range(2):
      weight[t, c, digit_pixels(2 * t + c)] = 1.0
  if confuse:
    weight[2, 0, digit_pixels(0)] = 2.0
  params = {'weight': jnp.asarray(np.stack([weight] * runs)),
            'bias': jnp.zeros((runs, 3, 2))}
  hp = trainer_lib.hyperparams([config] * runs)
  return task_inference.TaskInference(trainer), params, hp, tasks.for_runs(data, [1] * runs)


def infer(inference, params, hp, data, num_seen, stats=None):
  """Per task j < num_seen, {metric: [R] accuracy (%)} from the compiled counts."""
  results = []
  for j in range(num_seen):
    counts = jax.device_get(inference.evaluate(params, {}, data, 'test', j, num_seen, hp, stats))
    assert all(c.dtype == np.int32 for c in counts.values())
    results.append({k: 100.0 * c / int(data.test.size[j]) for k, c in counts.items()})
  return results


def test_entropy_inference_finds_each_task_when_its_network_is_the_only_sure_one(split_data):
  inference, params, hp, data = lookup_program(split_data, 'entropy', confuse=False)
  for result in infer(inference, params, hp, data, 3):
    for name in ('entropy_task_accuracy', 'entropy_accuracy'):
      np.testing.assert_allclose(result[name], [100.0, 100.0], rtol=1e-6)  # both runs


def test_entropy_inference_is_fooled_exactly_where_a_later_task_is_surer(split_data):
  inference, params, hp, data = lookup_program(split_data, 'entropy', confuse=True)
  labels = np.asarray(split_data.test.labels)
  offset, size = int(split_data.test.offset[0]), int(split_data.test.size[0])
  ones = 100.0 * np.mean(labels[offset:offset + size] == 1)  # task 0's digit-1 samples
  after_3 = infer(inference, params, hp, data, 3)
  np.testing.assert_allclose(after_3[0]['entropy_task_accuracy'], [ones] * 2, rtol=1e-5)
  np.testing.assert_allclose(after_3[0]['entropy_accuracy'], [ones] * 2, rtol=1e-5)
  np.testing.assert_allclose(after_3[1]['entropy_accuracy'], [100.0] * 2, rtol=1e-6)
  after_2 = infer(inference, params, hp, data, 2)  # the confusing task is not learned yet
  np.testing.assert_allclose(after_2[0]['entropy_accuracy'], [100.0] * 2, rtol=1e-6)
  assert inference.trainer.traces == {'infer_tasks': 1}  # one compile for every task count


def test_fecam_finds_the_class_the_entropy_misses(split_data):
  """The features are the inputs, the same under every task: the nearest class is the true one,
  and its task's network predicts it, where the confused entropy picks task 3."""
  inference, params, hp, data = lookup_program(split_data, 'fecam', confuse=True, runs=1)
  stats = inference.statistics(params, {}, data, 2, hp)
  assert stats['prototype'].shape == (1, 3, 2, 784)
  np.testing.assert_array_equal(stats['valid'][0], [[True, True], [True, True], [False, False]])
  stats = inference.statistics(params, {}, data, 3, hp)
  result = infer(inference, params, hp, data, 3, stats)[0]
  for name in ('fecam_task_accuracy', 'fecam_task_mode_accuracy', 'fecam_class_mode_accuracy'):
    np.testing.assert_allclose(result[name], [100.0], rtol=1e-6)
  assert result['entropy_accuracy'][0] < 60
  assert inference.trainer.traces == {'infer_tasks': 1, 'task_statistics': 1}


@pytest.mark.slow  # whole runs
@pytest.mark.parametrize('method', ['hypermask', 'hnet'])
def test_a_run_reports_entropy_inference_after_each_task(tmp_path, monkeypatch, split_data, caplog,
                                                         method):
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: split_data)
  config = split_mnist.get_config('small')
  config.update(method=method, num_tasks=3, target_hidden=(16,), hnet_hidden=(8,),
                embedding_size=4, sparsity=0.0, steps_per_task=7, log_every_steps=7,
                eval_batch_size=64, task_inference='entropy')
  with caplog.at_level('INFO', logger='absl'):  # once absl's flags are parsed, its own level
    summary = train.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / 'task_inference.json').read_text())
  details = summary['task_inference']['metrics']
  assert saved['mode'] == 'entropy' and set(saved['metrics']) == set(details)
  for name, metric in details.items():
    matrix = saved['metrics'][name]
    assert matrix[0][1] is None and None not in matrix[2]
    assert metric['final'] == matrix[2] and summary[name] == pytest.approx(np.mean(matrix[2]))
    sizes = np.asarray(split_data.test.size)
    assert metric['pooled'][-1] == pytest.approx(np.average(matrix[2], weights=sizes))
  # With the task given, the accuracy can only be higher than with it inferred.
  final = np.array(summary['accuracy_matrix'][-1])
  assert (np.array(details['entropy_accuracy']['final']) <= final + 1e-4).all()
  assert 'after task 3: entropy_task_accuracy:' in caplog.text
  assert summary['traces']['infer_tasks'] == 1


class Crash(Exception):
  """Stands for the machine dying right after a checkpoint was written."""


@pytest.mark.slow
def test_a_resumed_run_reports_what_an_uninterrupted_one_does(tmp_path, monkeypatch, split_data):
  """The matrices travel in the checkpoint's progress: a restart loses no row."""
  from hypermask_jax import checkpoints  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: split_data)
  config = split_mnist.get_config('small')
  config.update(num_tasks=3, target_hidden=(16,), hnet_hidden=(8,), embedding_size=4,
                sparsity=0.0, steps_per_task=7, log_every_steps=7, eval_batch_size=64,
                task_inference='entropy', checkpoint_every_steps=7)
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))
  save = checkpoints.Checkpointer.save

  def save_then_crash(self, step, state, progress):
    save(self, step, state, progress)
    if step == 14:  # the end of task 2, after its evaluation
      raise Crash()

  monkeypatch.setattr(checkpoints.Checkpointer, 'save', save_then_crash)
  with pytest.raises(Crash):
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(checkpoints.Checkpointer, 'save', save)
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['task_inference'] == full['task_inference']
  assert (tmp_path / 'resumed' / 'task_inference.json').read_text() == (
      tmp_path / 'full' / 'task_inference.json').read_text()


@pytest.mark.slow
def test_each_run_of_a_sweep_infers_tasks_as_it_does_alone(tmp_path, monkeypatch, split_data):
  """FeCAM (which reports the entropy too) over a runs axis of two seeds: the same matrices."""
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: split_data)

  def config(seed=1, sweep=None):
    config = split_mnist.get_config('small')
    config.update(num_tasks=3, target_hidden=(16,), hnet_hidden=(8,), embedding_size=4,
                  sparsity=0.0, steps_per_task=7, log_every_steps=7, eval_batch_size=64,
                  task_inference='fecam', seed=seed)
    if sweep:
      config.sweep.seed = sweep
    return config

  together = train.train_and_evaluate(config(sweep=(1, 2)), str(tmp_path / 'sweep'))['runs']
  for seed in (1, 2):
    alone = train.train_and_evaluate(config(seed), str(tmp_path / f'seed{seed}'))
    run = together[f'seed={seed}']
    assert run['run']['runs_in_program'] == 2
    for name, metric in alone['task_inference']['metrics'].items():
      np.testing.assert_allclose(np.array(run['task_inference']['metrics'][name]['matrix'],
                                          dtype=float),
                                 np.array(metric['matrix'], dtype=float), atol=TOLERANCE)
    assert run['traces'] == alone['traces']
  first, second = (together[f'seed={s}']['task_inference'] for s in (1, 2))
  assert first != second  # the seeds trained different networks
