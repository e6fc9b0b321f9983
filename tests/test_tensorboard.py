"""TensorBoard events: what a run writes, read back with TensorFlow's event reader, and resume."""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf
from tensorboardX.proto import plugin_hparams_pb2

from hypermask_jax import tensorboard
from hypermask_jax import train
from tests import fake_runs
from tests.test_train import tiny_config

CONFIG = {'method': 'hypermask', 'beta': 0.0005, 'num_tasks': 3, 'target_hidden': [16],
          'max_tasks': None, 'l1_masked': True}


def read_events(workdir):
  """({tag: [(step, value)] in file order}, hparams {name: value}, marks, event files).

  marks: ('restart', step) for a SessionLog START, ('finished', step) for the HParams end mark.
  """
  files = sorted((workdir / tensorboard.DIR).glob('events.out.tfevents.*'))
  scalars, hparams, marks = collections.defaultdict(list), {}, []
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      if event.HasField('session_log'):
        marks.append(('restart', event.step))
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'hparams':
          data = plugin_hparams_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content)
          for name, v in data.session_start_info.hparams.items():
            hparams[name] = getattr(v, v.WhichOneof('kind'))
          if data.HasField('session_end_info'):
            marks.append(('finished', event.step))
        else:
          scalars[value.tag].append((event.step, value.simple_value))
  return dict(scalars), hparams, marks, files


def assert_points(actual, expected):
  """[(step, value)] lists: the same steps and the values, up to float32 (as events store them)."""
  assert [s for s, _ in actual] == [s for s, _ in expected]
  np.testing.assert_allclose([v for _, v in actual], [v for _, v in expected], rtol=1e-6)


def empty_accuracy(n):
  return [[None] * n for _ in range(n)]


def write_run(board, records, accuracy, start_record=0):
  """Logs records[start_record:] and each task's accuracy row after its last record."""
  ends = tensorboard.task_ends(records)
  for record in records[start_record:]:
    board.log_metrics(record)
    task = record['task']
    if record['global_step'] == ends[task]:
      board.log_test_accuracy(accuracy[task - 1][:task], record['global_step'])


def test_a_run_writes_its_config_records_and_accuracies(tmp_path):
  records = fake_runs.fake_records(3, steps_per_task=100, chunk=50)
  acc = fake_runs.fake_accuracy(3, seed=0).tolist()
  board = tensorboard.Board(tmp_path)
  board.start(CONFIG, [], empty_accuracy(3))
  write_run(board, records, acc)
  board.log_summary({'mean_accuracy': 95.5, 'bwt': -1.0, 'forgetting': 1.5}, 300)
  board.close()

  scalars, hparams, marks, files = read_events(tmp_path)
  assert len(files) == 1 and marks == [('restart', 0), ('finished', 300)]
  assert hparams == {'method': 'hypermask', 'beta': 0.0005, 'num_tasks': 3.0,
                     'target_hidden': '[16]', 'max_tasks': 'None', 'l1_masked': True}
  assert_points(scalars['train/ce'], [(r['global_step'], r['ce']) for r in records])
  assert_points(scalars['val/accuracy'], [(r['global_step'], r['val_accuracy']) for r in records])
  assert scalars['speed/steps_per_sec'][0] == (50, 10.0)
  assert scalars['progress/task'] == [(50, 1), (100, 1), (150, 2), (200, 2), (250, 3), (300, 3)]
  assert 'train/step' not in scalars and 'train/global_step' not in scalars
  # After task i (at its last step, 100 * i), the accuracy of every task j <= i.
  assert_points(scalars['test_accuracy/task_1'],
                [(100, acc[0][0]), (200, acc[1][0]), (300, acc[2][0])])
  assert_points(scalars['test_accuracy/task_3'], [(300, acc[2][2])])
  assert_points(scalars['test_accuracy/mean'],
                [(100 * (i + 1), np.mean(acc[i][:i + 1])) for i in range(3)])
  assert scalars['summary/bwt'] == [(300, -1.0)]


def test_resume_rewrites_the_events_up_to_the_checkpoint_and_drops_the_rest(tmp_path):
  records = fake_runs.fake_records(3, steps_per_task=100, chunk=25)
  acc = fake_runs.fake_accuracy(3, seed=0).tolist()
  reference = tmp_path / 'reference'
  board = tensorboard.Board(reference)
  board.start(CONFIG, [], empty_accuracy(3))
  write_run(board, records, acc)
  board.close()

  # Killed in task 2 after 7 records; the checkpoint was saved at the end of task 1 (4 records).
  run = tmp_path / 'run'
  board = tensorboard.Board(run)
  board.start(CONFIG, [], empty_accuracy(3))
  write_run(board, records[:7], acc)
  board.close()  # everything the killed process logged is on disk
  assert max(s for s, _ in read_events(run)[0]['train/loss']) == 175
  restored_acc = empty_accuracy(3)
  restored_acc[0][0] = acc[0][0]
  board = tensorboard.Board(run)
  board.start(CONFIG, records[:4], restored_acc)
  write_run(board, records, acc, start_record=4)
  board.close()

  scalars, _, marks, files = read_events(run)
  assert len(files) == 1 and marks == [('restart', 0)]  # not finished: no summary yet
  assert scalars == read_events(reference)[0]
  for points in scalars.values():
    steps = [s for s, _ in points]
    assert steps == sorted(set(steps))  # no duplicated or out-of-order points


class Crash(Exception):
  pass


@pytest.mark.slow  # two short training runs: about 30 s on 2 shared cores
def test_a_killed_and_resumed_run_has_no_stray_points(tmp_path, monkeypatch, synthetic_task_set):
  """Through the training loop: a crash in task 2, after logging past the task-1 checkpoint."""
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: synthetic_task_set)
  workdir = tmp_path / 'run'
  config = tiny_config(steps_per_task=6, log_every_steps=2)
  original = tensorboard.Board.log_metrics
  logged = []

  def crash_in_task_2(self, record):
    original(self, record)
    logged.append(record)
    if record['global_step'] == 10:
      raise Crash()

  monkeypatch.setattr(tensorboard.Board, 'log_metrics', crash_in_task_2)
  with pytest.raises(Crash):
    train.train_and_evaluate(config, str(workdir))
  assert max(s for s, _ in read_events(workdir)[0]['train/loss']) == 10  # past the checkpoint
  monkeypatch.setattr(tensorboard.Board, 'log_metrics', original)
  summary = train.train_and_evaluate(config, str(workdir))

  scalars, hparams, marks, files = read_events(workdir)
  assert marks == [('restart', 0), ('finished', 18)]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert len(files) == 1 and hparams['seed'] == 1
  assert [s for s, _ in scalars['train/loss']] == list(range(2, 19, 2))
  assert_points(scalars['train/loss'], [(r['global_step'], r['loss']) for r in records])
  final = summary['accuracy_matrix'][-1]
  assert_points(scalars['test_accuracy/task_1'],
                [(6 * (i + 1), row[0]) for i, row in enumerate(summary['accuracy_matrix'])])
  assert_points(scalars['test_accuracy/task_3'], [(18, final[2])])
  assert_points(scalars['summary/mean_accuracy'], [(18, summary['mean_accuracy'])])
