"""TensorBoard event files of a run, under <workdir>/tensorboard/, consistent with its checkpoint.

Written with tensorboardX rather than tf.summary: tensorboardX is pure Python
(0.7 MB installed, on the protobuf that TensorFlow already brings) and needs
no TensorFlow in the logging path, where tf.summary needs the `tensorboard`
package as well (about 35 MB with its data server), which TF 2.21 no longer
installs. TensorFlow is here only for TFDS's tf.data reader. The files are
the standard event format: `pip install tensorboard` wherever they are viewed
(`tensorboard --logdir WORKDIR`, or a sweep's folder to compare its runs).
A gs:// workdir needs `google-cloud-storage` for tensorboardX's GCS writer.

What a run writes, x = the run's global step:
- at start, the config as hyperparameters (the HParams dashboard);
- per chunk, every number of the metrics record: train/<loss term>,
  train/accuracy, train/learning_rate, val/accuracy, val/best_accuracy,
  speed/steps_per_sec, progress/task, progress/epoch;
- after each task i, test_accuracy/task_<j> for every task j <= i and
  test_accuracy/mean, at the global step that ended task i;
- at the end, summary/mean_accuracy, summary/bwt and summary/forgetting.

Resume: `start` writes the events again from what the checkpoint restored
(its metrics records and accuracy rows) into a new file and deletes every
older event file first, so the folder holds exactly the points up to the
checkpoint, and nothing a killed process wrote after it. The new file begins
with a SessionLog START at step 0, which tells a TensorBoard that was watching
the old files to drop the points it had read from them.
"""

import time

from etils import epath
import numpy as np

DIR = 'tensorboard'
# Record fields that are not a plot of their own, and the tags of those not under train/.
NOT_PLOTTED = ('step', 'global_step')
TAGS = {'val_accuracy': 'val/accuracy', 'best_val_accuracy': 'val/best_accuracy',
        'val_loss': 'val/loss', 'best_val_loss': 'val/best_loss', 'steps_per_sec': 'speed/steps_per_sec', 'task': 'progress/task',
        'epoch': 'progress/epoch'}
SUMMARY_FIELDS = ('mean_accuracy', 'bwt', 'forgetting')
# What the HParams dashboard shows beside each run's config.
HPARAM_METRICS = ('test_accuracy/mean',) + tuple(f'summary/{k}' for k in SUMMARY_FIELDS)


def record_tag(field):
  return TAGS.get(field, f'train/{field}')


def hparam_value(value):
  """Numbers, strings and booleans as they are; anything else (tuples, None) as its text."""
  return value if isinstance(value, (bool, int, float, str)) else str(value)


def task_ends(records):
  """{task (from 1): its last global step in the records}."""
  ends = {}
  for r in records:
    ends[r['task']] = max(ends.get(r['task'], 0), r['global_step'])
  return ends


class Board:
  """The event files of one run. Call `start` once (fresh or resumed), then log, then `close`."""

  def __init__(self, workdir):
    self.path = epath.Path(workdir) / DIR
    self.writer = None
    self.task_digits = 1
    self.session_end = None  # the HParams "finished" mark, written with the summary

  def start(self, config, records, accuracy):
    """Deletes the folder's event files and writes the run's events up to the checkpoint.

    config: the flat config ({field: value}); records: the metrics records
    restored from the checkpoint ([] for a fresh run); accuracy: the accuracy
    matrix restored with them (rows of num_tasks values, None where not yet
    evaluated).
    """
    # Imported here, by a run that writes events: tensorboardX imports torch when it is installed
    # (seconds, and its memory in the process), which importing train.py must not cost the
    # benchmarks that compare with PyTorch.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    from tensorboardX import summary as tbx_summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

    for old in self.path.glob('events.out.tfevents.*'):
      old.unlink()
    self.path.mkdir(parents=True, exist_ok=True)
    self.task_digits = len(str(len(accuracy)))
    # tensorboardX names files by the second: the suffix keeps a rewrite from reusing the name.
    self.writer = tensorboardX.SummaryWriter(str(self.path), flush_secs=30,
                                             filename_suffix=f'.{time.time_ns()}')
    file_writer = self.writer.file_writer
    file_writer.add_event(event_pb2.Event(
        step=0, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    experiment, session_start, self.session_end = tbx_summary.hparams(
        {k: hparam_value(v) for k, v in config.items()}, {m: None for m in HPARAM_METRICS})
    file_writer.add_summary(experiment)
    file_writer.add_summary(session_start)
    ends = task_ends(records)
    for record in records:
      self._scalars(record)
    for i, row in enumerate(accuracy):
      if row[i] is not None:
        self._test_accuracy(row[:i + 1], ends[i + 1])
    self.writer.flush()

  def _scalars(self, record):
    for field, value in record.items():
      if field not in NOT_PLOTTED and type(value) in (int, float):
        self.writer.add_scalar(record_tag(field), value, record['global_step'])

  def _test_accuracy(self, row, global_step):
    for j, value in enumerate(row):
      self.writer.add_scalar(f'test_accuracy/task_{j + 1:0{self.task_digits}d}', value,
                             global_step)
    self.writer.add_scalar('test_accuracy/mean', float(np.mean(row)), global_step)

  def log_metrics(self, record):
    """One metrics record (a chunk), at its 'global_step'."""
    self._scalars(record)
    self.writer.flush()

  def log_test_accuracy(self, row, global_step):
    """The test accuracy (%) of tasks 1..i after training task i (row), at i's last step."""
    self._test_accuracy(row, global_step)
    self.writer.flush()

  def log_summary(self, summary, global_step):
    """The run's final mean accuracy, BWT and forgetting; HParams marks the run finished."""
    for field in SUMMARY_FIELDS:
      self.writer.add_scalar(f'summary/{field}', summary[field], global_step)
    self.writer.file_writer.add_summary(self.session_end, global_step)
    self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()
      self.writer = None
