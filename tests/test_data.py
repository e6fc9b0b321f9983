"""Task builders, on-device batches and augmentation, the TFDS loader and the offline importer."""

import gzip
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from hypermask_jax.data import prepare
from hypermask_jax.data import tasks
from hypermask_jax.data import tfds_io
from tests.conftest import synthetic_mnist
from tests.conftest import write_mnist_idx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_permuted_mnist_layout():
  train, test = synthetic_mnist(n_train=600, n_test=200)
  ts = tasks.permuted_mnist(train, test, num_tasks=4, seed=7, val_size=100)
  assert ts.train.images.shape == (500, 28, 28, 1) and ts.val.images.shape == (100, 28, 28, 1)
  np.testing.assert_array_equal(ts.val.images, train[0][:100])  # validation = first images
  np.testing.assert_array_equal(ts.train.size, [500] * 4)
  np.testing.assert_array_equal(ts.test.offset, [0] * 4)
  rs = np.random.RandomState(7)
  expected = np.stack([rs.permutation(1024) for _ in range(4)])
  np.testing.assert_array_equal(ts.perms, expected)
  assert not np.array_equal(expected[0], np.arange(1024))  # task 0 is permuted too


def test_permuted_inputs_pad_then_permute():
  train, test = synthetic_mnist(n_train=20, n_test=10)
  ts = tasks.permuted_mnist(train, test, num_tasks=2, seed=0, val_size=5)
  images = ts.test.images[:3]
  for task in range(2):
    x = np.asarray(ts.inputs(images, task, None, train=False))
    padded = np.pad(np.asarray(images, np.float32) / 255, ((0, 0), (2, 2), (2, 2), (0, 0)))
    np.testing.assert_allclose(x, padded.reshape(3, 1024)[:, np.asarray(ts.perms[task])])


def test_split_mnist_tasks():
  train, test = synthetic_mnist(n_train=3000, n_test=500)
  ts = tasks.split_mnist(train, test, num_tasks=5, val_size=50)
  for t in range(5):
    for split in (ts.train, ts.val, ts.test):
      lo, n = int(split.offset[t]), int(split.size[t])
      assert set(np.asarray(split.labels[lo:lo + n]).tolist()) <= {0, 1}
    lo, n = int(ts.test.offset[t]), int(ts.test.size[t])
    digits = test[1][(test[1] == 2 * t) | (test[1] == 2 * t + 1)]
    np.testing.assert_array_equal(ts.test.labels[lo:lo + n], digits - 2 * t)
    assert int(ts.val.size[t]) == 50
    assert int(ts.train.size[t]) == int(np.sum((train[1] // 2) == t)) - 50
  assert ts.num_classes == 2 and ts.input_shape == (784,)


def test_random_crop_stays_in_padded_image():
  images = jnp.ones((64, 28, 28, 1))
  crops = tasks.random_crop(jax.random.key(0), images, pad=4)
  assert crops.shape == images.shape
  # Each crop is a 28x28 window of the zero-padded image: at most 4 zero rows/cols per side.
  rows_kept = np.asarray(crops[..., 0].max(axis=2) > 0).sum(axis=1)
  assert rows_kept.min() >= 24 and rows_kept.max() == 28
  assert len({tuple(np.asarray(c[..., 0].sum(axis=0))) for c in crops}) > 1  # offsets differ


def test_draw_batch_stays_inside_the_task():
  train, test = synthetic_mnist(n_train=3000, n_test=500)
  ts = tasks.split_mnist(train, test, num_tasks=5, val_size=50)
  images, labels = tasks.draw_batch(ts.test, 3, jax.random.key(1), 512)
  lo, n = int(ts.test.offset[3]), int(ts.test.size[3])
  member = {tuple(np.asarray(x).ravel()[:50]) for x in ts.test.images[lo:lo + n]}
  assert all(tuple(np.asarray(x).ravel()[:50]) in member for x in images[:20])
  assert set(np.asarray(labels).tolist()) == {0, 1}


def test_loader_reads_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    images, labels = tfds_io.load_split('mnist', 'train', download=False)
  assert images.shape == (12, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (12,) and labels.dtype == np.int32


@pytest.mark.parametrize('download', [False, True])
def test_missing_dataset_names_data_dir_and_importer(tmp_path, monkeypatch, download):
  monkeypatch.setattr(tfds_io, 'DOWNLOAD_HOST', 'no-such-host.invalid')  # offline, and fast
  with pytest.raises(tfds_io.DatasetUnavailableError) as e:
    tfds_io.load_split('mnist', 'train', str(tmp_path), download=download)
  assert f"data_dir='{tmp_path}'" in str(e.value)
  assert 'python -m hypermask_jax.data.prepare mnist' in str(e.value)


def test_importer_round_trip(tmp_path):
  train, test = synthetic_mnist(n_train=30, n_test=10)
  raw = write_mnist_idx(tmp_path / 'raw', train, test)
  data_dir = str(tmp_path / 'tfds')
  done = prepare.prepare('mnist', str(raw), data_dir)
  assert done['written'] and done['counts'] == {'train': 30, 'test': 10}
  assert done['dataset_dir'] == str(tmp_path / 'tfds' / 'mnist' / '3.0.1')
  again = prepare.prepare('mnist', str(raw), data_dir)  # already there: verified, not rebuilt
  assert not again['written'] and again['counts'] == {'train': 30, 'test': 10}
  for split, (x, y) in (('train', train), ('test', test)):
    images, labels = tfds_io.load_split('mnist', split, data_dir, download=False)
    order = np.argsort([bytes(img.tobytes()) for img in images])
    expected = np.argsort([bytes(img.tobytes()) for img in x])
    np.testing.assert_array_equal(images[order], x[expected])  # same examples (TFDS shuffles)
    np.testing.assert_array_equal(labels[order], y[expected])


def test_importer_rejects_a_bad_file(tmp_path):
  for name in prepare.MNIST_FILES['train'] + prepare.MNIST_FILES['test']:
    with gzip.open(tmp_path / name, 'wb') as f:
      f.write(b'not an idx file')
  with pytest.raises(prepare.SourceError, match='IDX'):
    prepare.read_mnist(str(tmp_path))


def prepare_cli(*args):
  return subprocess.run([sys.executable, '-m', 'hypermask_jax.data.prepare', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_prepare_command_reports_verifies_and_rebuilds(tmp_path):
  raw = write_mnist_idx(tmp_path / 'raw', *synthetic_mnist(n_train=30, n_test=10))
  data_dir = tmp_path / 'tfds'
  args = ['mnist', f'--source_dir={raw}', f'--data_dir={data_dir}']
  first = prepare_cli(*args)
  assert first.returncode == 0, first.stderr[-2000:]
  assert first.stdout.splitlines() == [
      f'mnist: read the raw files in {raw}', f'mnist: wrote {data_dir}/mnist/3.0.1',
      'mnist: read back intact: train 30, test 10 examples']
  assert 'download' not in (first.stdout + first.stderr).lower()
  assert '%|' not in first.stderr  # no progress bars
  again = prepare_cli(*args)
  assert again.returncode == 0 and again.stdout.splitlines() == [
      f'mnist: already prepared in {data_dir}/mnist/3.0.1; read back intact: train 30, test 10 '
      'examples (--force rebuilds it)']
  record = next(data_dir.rglob('mnist-train.tfrecord*'))
  record.write_bytes(record.read_bytes()[:-100])
  damaged = prepare_cli(*args)
  assert damaged.returncode == 2 and 'Traceback' not in damaged.stderr
  assert damaged.stderr.strip().splitlines() == [
      f"error: TFDS dataset 'mnist' in {data_dir}/mnist/3.0.1 is damaged (DataLossError: "
      + damaged.stderr.split('(DataLossError: ')[1].split(')')[0] + ')' + '; rebuild it with: '
      f'python -m hypermask_jax.data.prepare mnist --source_dir {raw} --data_dir {data_dir} '
      '--force']
  rebuilt = prepare_cli(*args, '--force')
  assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
  assert rebuilt.stdout.splitlines()[-1] == 'mnist: read back intact: train 30, test 10 examples'


def test_force_reads_the_source_before_removing_the_old_dataset(tmp_path):
  raw = write_mnist_idx(tmp_path / 'raw', *synthetic_mnist(n_train=30, n_test=10))
  data_dir = str(tmp_path / 'tfds')
  prepare.prepare('mnist', str(raw), data_dir)
  (raw / prepare.MNIST_FILES['test'][0]).unlink()
  with pytest.raises(prepare.SourceError, match='not found'):
    prepare.prepare('mnist', str(raw), data_dir, force=True)
  assert prepare.verify('mnist', data_dir) == {'train': 30, 'test': 10}  # still there, intact


@pytest.mark.parametrize('damage', ['truncated', 'not-gzip'])
def test_a_damaged_gz_file_is_named(tmp_path, damage):
  raw = write_mnist_idx(tmp_path, *synthetic_mnist(n_train=30, n_test=10))
  path = raw / prepare.MNIST_FILES['train'][0]
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'plain bytes, no gzip')
  with pytest.raises(prepare.SourceError) as e:
    prepare.read_mnist(str(raw))
  assert str(e.value).startswith(f'{path}: not a complete gzip file (')
  assert '\n' not in str(e.value)
