"""The shared training loop: one trace across tasks, results folder, refusal to overwrite."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import outputs
from hypermask_jax import train
from hypermask_jax.methods.hypermask import HyperMask


def tiny_config(**overrides):
  config = permuted_mnist.get_config('small')
  config.num_tasks = 3
  config.target_hidden = (16,)
  config.hnet_hidden = (8,)
  config.embedding_size = 4
  config.batch_size = 32
  config.steps_per_task = 7
  config.log_every_steps = 3  # does not divide 7: the last chunk has skipped steps
  config.eval_batch_size = 64
  config.update(overrides)
  return config_checks.resolve(config)


def test_train_step_traces_once_across_tasks(synthetic_task_set):
  config = tiny_config()
  data = synthetic_task_set
  trainer = train.Trainer(config, HyperMask(config, data.input_shape, data.num_classes))
  hp = train.hyperparams(config)
  state = trainer.init_state(0, hp)
  for task in range(3):
    state = trainer.begin_task(state, task, hp)
    for _ in range(3):
      state, (_, active) = trainer.train_chunk(state, data, hp)
    assert int(state.step) == 7 and int(np.sum(active)) == 1
    for j in range(task + 1):
      trainer.evaluate(state.params, state.batch_stats, data, data.test, j, hp)
  assert trainer.traces == {'begin_task': 1, 'train_chunk': 1, 'evaluate': 1}


def test_previous_embeddings_move_only_through_the_regulariser(synthetic_task_set):
  data = synthetic_task_set
  for beta, moves in ((0.0, False), (1.0, True)):
    config = tiny_config(beta=beta)
    trainer = train.Trainer(config, HyperMask(config, data.input_shape, data.num_classes))
    hp = train.hyperparams(config)
    state = trainer.init_state(0, hp)
    before = np.asarray(state.params['hnet']['embeddings'])
    state = trainer.begin_task(state, 1, hp)
    state, _ = trainer.train_chunk(state, data, hp)
    after = np.asarray(state.params['hnet']['embeddings'])
    assert not np.array_equal(after[1], before[1])  # the current task's embedding learns
    assert np.array_equal(after[2:], before[2:])  # future tasks' embeddings do not move
    assert np.array_equal(after[0], before[0]) != moves


def test_eval_uses_each_tasks_own_embedding(synthetic_task_set):
  config = tiny_config()
  data = synthetic_task_set
  method = HyperMask(config, data.input_shape, data.num_classes)
  params = method.init_params(jax.random.key(0))
  hp = train.hyperparams(config)
  w0 = method.eval_weights(params, np.int32(0), hp)
  w1 = method.eval_weights(params, np.int32(1), hp)
  assert not np.allclose(w0['dense_0']['kernel'], w1['dense_0']['kernel'])
  np.testing.assert_array_equal(w0['head']['bias'], params['target']['head']['bias'])


def test_output_bias_mask_weights_its_drift_and_regulariser_not_the_forward_pass(
    synthetic_task_set):
  config = tiny_config()
  data = synthetic_task_set
  method = HyperMask(config, data.input_shape, data.num_classes)
  params = method.init_params(jax.random.key(0))
  assert method.layout.paths[-1] == ('head', 'bias')  # generated, last in the flat output
  memory = method.begin_task(params)
  x = data.inputs(data.train.images[:32], 1, None, train=False)
  batch, hp = (x, data.train.labels[:32], 1), train.hyperparams(config)
  loss = lambda p: method.loss(p, {}, batch, jnp.int32(1), 0, memory, hp, jax.random.key(1))
  head_mask = method.masks(params, method.hnet_outputs(params['hnet'], jnp.array([1]))[0],
                           0.0)['head']['bias']
  # Moving only the output bias: the logits move by exactly that (its mask is not applied) and
  # the L1 drift is that move weighted by the bias's mask.
  moved = {**params, 'target': {**params['target'], 'head': {
      **params['target']['head'], 'bias': params['target']['head']['bias'] + 0.5}}}
  logits = lambda p: method.predict(method.eval_weights(p, jnp.int32(1), hp), {}, x, 1)
  np.testing.assert_allclose(logits(moved), logits(params) + 0.5, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss(moved)[1][0]['l1'], 0.5 * jnp.sum(head_mask), rtol=1e-5)
  # The hypernetwork's outputs for the bias are regularised: shift them for task 0 by 0.1.
  shifted = {**params, 'hnet': {**params['hnet'], 'out': {
      **params['hnet']['out'], 'bias': params['hnet']['out']['bias'].at[-10:].add(0.1)}}}
  np.testing.assert_allclose(loss(shifted)[1][0]['reg'], 10 * 0.1 ** 2, rtol=1e-4)


@pytest.fixture
def patched_data(monkeypatch, synthetic_task_set):
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: synthetic_task_set)


def test_run_writes_results_and_does_not_overwrite_them(tmp_path, patched_data):
  workdir = tmp_path / 'run'
  summary = train.train_and_evaluate(tiny_config(), str(workdir))
  files = {p.name for p in workdir.iterdir()}
  assert {'config.json', 'metrics.jsonl', 'accuracy_matrix.csv', 'accuracy_matrix.json',
          'summary.json', 'task_embeddings.json', 'embedding_similarity.csv'} <= files
  embeddings = np.array(json.loads((workdir / 'task_embeddings.json').read_text()))
  assert embeddings.shape == (3, 4)
  similarity = np.loadtxt(workdir / 'embedding_similarity.csv', delimiter=',', skiprows=1)[:, 1:]
  np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-4)
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  np.testing.assert_allclose(similarity, unit @ unit.T, atol=1e-4)
  acc = json.loads((workdir / 'accuracy_matrix.json').read_text())
  assert len(acc) == 3 and acc[0][1] is None and acc[2][2] is not None
  assert summary['mean_accuracy'] == pytest.approx(np.mean(acc[2]))
  csv = (workdir / 'accuracy_matrix.csv').read_text().splitlines()
  assert csv[0] == 'after_task,task_0,task_1,task_2' and csv[1].endswith(',,')
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert len(records) == 3 * 3 and {'loss', 'ce', 'reg', 'l1', 'val_accuracy'} <= set(records[0])
  before = (workdir / 'summary.json').read_text()

  # The same config again: nothing is retrained or rewritten.
  assert train.train_and_evaluate(tiny_config(), str(workdir)) == json.loads(before)
  assert (workdir / 'metrics.jsonl').read_text().count('\n') == 9
  # A different config into the finished workdir is refused, naming the fields.
  with pytest.raises(outputs.WorkdirError, match=r'beta: saved 0.0005, requested 0.1'):
    train.train_and_evaluate(tiny_config(beta=0.1), str(workdir))
  assert (workdir / 'summary.json').read_text() == before


@pytest.mark.parametrize('method', ['hypermask', 'hnet', 'finetune', 'joint'])
def test_every_method_runs_through_the_shared_loop(tmp_path, patched_data, method):
  summary = train.train_and_evaluate(tiny_config(method=method, chunk_size=500),
                                     str(tmp_path / method))
  assert len(summary['accuracy_matrix']) == 3
  assert summary['traces']['train_chunk'] == 1
