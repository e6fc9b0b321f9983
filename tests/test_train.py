"""The shared training loop: one trace across tasks, results folder, refusal to overwrite."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import outputs
from hypermask_jax import train
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS
from hypermask_jax.methods.hypermask import HyperMask
from tests.conftest import fresh_program
from tests.conftest import run_chunk
from tests.conftest import synthetic_mnist


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
  trainer = trainer_lib.Trainer(config, HyperMask(config, data.input_shape, data.num_classes))
  state, data, hp = fresh_program(trainer, data)
  for task in range(3):
    state = trainer.begin_task(state, task, hp)
    for _ in range(3):  # 3 + 3 + 1 steps
      state = run_chunk(trainer, state, data, hp)
    assert int(state.step) == 7
    for j in range(task + 1):
      trainer.evaluate(state.params, state.batch_stats, data, 'test', j, hp)
  assert trainer.traces == {'init_state': 1, 'begin_task': 1, 'train_steps': 1, 'train_step': 1,
                            'end_chunk': 1, 'evaluate_test': 1}


@pytest.mark.parametrize('overrides', [
    dict(sparsity=30.0),  # the masks' percentile, the regulariser's switch, the wide layer's
    dict(method='hnet', chunk_size=50, lookahead=True),
    dict(method='joint'),  # batches drawn across tasks
])
def test_the_train_step_runs_no_loop_but_the_loop_over_steps(synthetic_task_set, overrides,
                                                             monkeypatch):
  """A GPU waits for the host at every turn of a loop in a compiled program (1.8 ms per
  Permuted MNIST step for the batch shuffle's 78 rounds, as a loop); the steps' own loop is
  the only one a train call may hold. The program is lowered for a GPU, which needs none
  (JAX's CPU lowering of its random bits is itself a loop, the GPU's is not), with the
  shuffle's rounds unrolled as on a GPU (on CPU they are a loop, backend.shuffle_rounds)."""
  monkeypatch.setenv('HYPERMASK_SHUFFLE_ROUNDS', 'unrolled')
  config = tiny_config(**overrides)
  data = synthetic_task_set
  method = METHODS[config.method](config, data.input_shape, data.num_classes)
  trainer = trainer_lib.Trainer(config, method)
  hp = trainer_lib.hyperparams([config])
  data = tasks.for_runs(data, [config.seed])
  state = jax.eval_shape(trainer.begin_task, jax.eval_shape(trainer.init_state, hp), 1, hp)
  program = trainer.train_steps.trace(state, data, hp, np.int32(3)).lower(
      lowering_platforms=('cuda',)).as_text()
  assert program.count('stablehlo.while') == 1


@pytest.mark.slow  # compiles a step to read its HLO
def test_the_compiled_step_never_transposes_a_dense_weight_or_its_mask(synthetic_task_set):
  """The masks come out of the hypernetwork in PyTorch's [out, in] layout, and the target's
  Dense weights are stored in it (layers.Linear), so the compiled HyperMask step (masks,
  masked product, gradients, Adam) holds no transpose of a [24, 1024] or [10, 24] tensor.
  With Flax's [in, out] kernels, XLA:CPU compiled 30 of them here (masks, the masked kernel's
  gradient, the target's Adam), 4-11% of the published Permuted MNIST step
  (docs/benchmark_history.md)."""
  config = tiny_config(target_hidden=(24,), sparsity=30.0)
  data = synthetic_task_set
  trainer = trainer_lib.Trainer(config, HyperMask(config, data.input_shape, data.num_classes))
  state, data, hp = fresh_program(trainer, data)
  hlo = trainer.train_steps.lower(state, data, hp, np.int32(2)).compile().as_text()
  weight = r'f32\[(?:1,)?(?:24,1024|1024,24|10,24|24,10)\]'
  assert len(re.findall(weight + r'\{', hlo)) > 20  # the pattern names the weights' arrays
  transposes = re.findall(weight + r'\{[0-9,]*\} transpose\(', hlo)
  assert not transposes, transposes


def test_how_steps_are_grouped_into_calls_changes_nothing(synthetic_task_set):
  """The host picks each call's length by wall time: any grouping must give the same run."""
  config = tiny_config()
  data = synthetic_task_set
  trainer = trainer_lib.Trainer(config, HyperMask(config, data.input_shape, data.num_classes))
  runs = []
  for calls in ((3, 3, 1), (1, 2, 1, 2, 1)):
    state, data, hp = fresh_program(trainer, synthetic_task_set)
    state = trainer.begin_task(trainer.begin_task(state, 0, hp), 1, hp)
    losses = []
    for n in calls:
      state, metrics = trainer.train_steps(state, data, hp, np.int32(n))
      losses += list(np.asarray(metrics['loss'])[:n])
      assert not np.asarray(metrics['loss'])[n:].any()  # entries past the call's steps: zero
    runs.append((jax.device_get(state), losses))
  (state_a, losses_a), (state_b, losses_b) = runs
  assert losses_a == losses_b and len(losses_a) == 7
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  assert trainer.traces['train_steps'] == 1


def test_previous_embeddings_move_only_through_the_regulariser(synthetic_task_set):
  data = synthetic_task_set
  for beta, moves in ((0.0, False), (1.0, True)):
    config = tiny_config(beta=beta)
    trainer = trainer_lib.Trainer(config, HyperMask(config, data.input_shape, data.num_classes))
    state, program_data, hp = fresh_program(trainer, data)
    before = np.asarray(state.params['hnet']['embeddings'][0])
    state = trainer.begin_task(state, 1, hp)
    state = run_chunk(trainer, state, program_data, hp)
    after = np.asarray(state.params['hnet']['embeddings'][0])
    assert not np.array_equal(after[1], before[1])  # the current task's embedding learns
    assert np.array_equal(after[2:], before[2:])  # future tasks' embeddings do not move
    assert np.array_equal(after[0], before[0]) != moves


def test_eval_uses_each_tasks_own_embedding(synthetic_task_set):
  config = tiny_config()
  data = synthetic_task_set
  method = HyperMask(config, data.input_shape, data.num_classes)
  params = method.init_params(jax.random.key(0))
  hp = trainer_lib.run_hyperparams(config)
  w0 = method.eval_weights(params, np.int32(0), hp)
  w1 = method.eval_weights(params, np.int32(1), hp)
  assert not np.allclose(w0['dense_0']['weight'], w1['dense_0']['weight'])
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
  batch, hp = (x, data.train.labels[:32], 1), trainer_lib.run_hyperparams(config)
  loss = lambda p: method.loss(p, {}, batch, jnp.int32(1), 0, memory, hp, jax.random.key(1))
  head_mask = method.masks(params, method.task_tensors(params['hnet'], jnp.int32(1)),
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


@pytest.mark.slow  # whole runs
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
  assert csv[0] == 'after_task,task_1,task_2,task_3' and csv[1].startswith('1,')  # from 1
  assert csv[1].endswith(',,')
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert len(records) == 3 * 3 and {'loss', 'ce', 'reg', 'l1', 'val_accuracy'} <= set(records[0])
  assert [(r['task'], r['step'], r['global_step']) for r in records[:4]] == [
      (1, 3, 3), (1, 6, 6), (1, 7, 7), (2, 3, 10)]
  assert max(r['accuracy'] for r in records) > 1.0  # percent, like val_accuracy, not a fraction
  assert all(r.get('steps_per_sec', 1.0) > 0 for r in records)  # absent until measured
  assert summary['environment']['backend'] == 'cpu' and summary['environment']['jax']
  # Just after training (the diagonal) apart from final; FWT from the next task before its
  # training against the initial params.
  assert summary['just_after_training_accuracy'] == [acc[t][t] for t in range(3)]
  assert summary['final_accuracy'] == acc[2]
  ahead, at_init = summary['before_training_accuracy'], summary['random_init_accuracy']
  assert ahead[0] is None and None not in ahead[1:] and None not in at_init
  assert summary['fwt'] == pytest.approx(np.mean([ahead[j] - at_init[j] for j in (1, 2)]))
  before = (workdir / 'summary.json').read_text()

  # The same config again: nothing is retrained or rewritten.
  assert train.train_and_evaluate(tiny_config(), str(workdir)) == json.loads(before)
  assert (workdir / 'metrics.jsonl').read_text().count('\n') == 9
  # A different config into the finished workdir is refused, naming the fields.
  with pytest.raises(outputs.WorkdirError, match=r'beta: saved 0.0005, requested 0.1'):
    train.train_and_evaluate(tiny_config(beta=0.1), str(workdir))
  assert (workdir / 'summary.json').read_text() == before


@pytest.mark.slow  # a whole run
def test_a_protocol_without_validation_split_logs_no_validation_accuracy(tmp_path, monkeypatch):
  train_split, test_split = synthetic_mnist()
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: tasks.permuted_mnist(
      train_split, test_split, config.num_tasks, config.seed, 'hypercl'))
  config = tiny_config(data_protocol='hypercl', num_tasks=2)
  summary = train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert records and not any('val_accuracy' in r for r in records)
  assert summary['final_val_accuracy'] is None and np.isnan(summary['mean_val_accuracy'])
  assert 'evaluate_val' not in summary['traces']
  assert None not in summary['final_accuracy']


@pytest.mark.slow  # whole runs
@pytest.mark.parametrize('method', ['hypermask', 'hnet', 'finetune', 'joint'])
def test_every_method_runs_through_the_shared_loop(tmp_path, patched_data, method):
  summary = train.train_and_evaluate(tiny_config(method=method, chunk_size=500),
                                     str(tmp_path / method))
  assert len(summary['accuracy_matrix']) == 3
  assert summary['traces']['train_steps'] == 1
