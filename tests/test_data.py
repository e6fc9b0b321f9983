"""Task builders, on-device batches and augmentation, the TFDS loader and the offline importer."""

import gzip
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from hypermask_jax import errors
from hypermask_jax.data import decoded_copy
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


def test_hypercl_permuted_mnist_protocol():
  train, test = synthetic_mnist(n_train=600, n_test=200)
  ts = tasks.permuted_mnist(train, test, num_tasks=4, seed=7, protocol='hypercl')
  assert ts.val is None and ts.train.images.shape == (600, 28, 28, 1)  # all of the training set
  assert ts.input_shape == (784,)
  np.testing.assert_array_equal(ts.perms[0], np.arange(784))  # task 0 unpermuted
  rs = np.random.RandomState(42)  # hypercl's fixed data seed, whatever the run's seed
  np.testing.assert_array_equal(ts.perms[1:], [rs.permutation(784) for _ in range(3)])
  other_seed = tasks.permuted_mnist(train, test, num_tasks=4, seed=3, protocol='hypercl')
  np.testing.assert_array_equal(other_seed.perms, ts.perms)
  images = ts.test.images[:3]
  flat = np.asarray(images, np.float32).reshape(3, 784) / 255  # no padding
  for task in range(4):
    np.testing.assert_allclose(ts.inputs(images, task, None, train=True),
                               flat[:, np.asarray(ts.perms[task])])


def test_hypercl_split_mnist_protocol():
  train, test = synthetic_mnist(n_train=3000, n_test=500)
  ts = tasks.split_mnist(train, test, num_tasks=5, protocol='hypercl')
  assert ts.val is None
  assert int(ts.train.size.sum()) == 3000  # no validation split
  images = ts.train.images[:8]
  x = ts.inputs(images, 0, jax.random.key(0), train=True)  # no augmentation, no normalisation
  np.testing.assert_allclose(x, np.asarray(images, np.float32).reshape(8, 784) / 255)


def test_permuted_inputs_pad_then_permute():
  train, test = synthetic_mnist(n_train=20, n_test=10)
  ts = tasks.permuted_mnist(train, test, num_tasks=2, seed=0, val_size=5)
  images = ts.test.images[:3]
  padded = np.pad(np.asarray(images, np.float32) / 255, ((0, 0), (2, 2), (2, 2), (0, 0)))
  padded = padded.reshape(3, 1024)
  by_task = [np.asarray(ts.inputs(images, task, None, train=False)) for task in range(2)]
  for task, x in enumerate(by_task):
    np.testing.assert_allclose(x, padded[:, np.asarray(ts.perms[task])])
  # Joint training's batches: one task per image, each image permuted by its own task's.
  per_image = np.asarray(ts.inputs(images, jnp.array([1, 0, 1]), None, train=False))
  for i, task in enumerate([1, 0, 1]):
    np.testing.assert_array_equal(per_image[i], by_task[task][i])


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
  crops = jax.jit(tasks.random_crop, static_argnames='pad')(jax.random.key(0), images, pad=4)
  assert crops.shape == images.shape
  # Each crop is a 28x28 window of the zero-padded image: at most 4 zero rows/cols per side.
  rows_kept = np.asarray(crops[..., 0].max(axis=2) > 0).sum(axis=1)
  assert rows_kept.min() >= 24 and rows_kept.max() == 28
  assert len({tuple(np.asarray(c[..., 0].sum(axis=0))) for c in crops}) > 1  # offsets differ


def test_draw_batch_stays_inside_the_task():
  train, test = synthetic_mnist(n_train=3000, n_test=500)
  ts = tasks.split_mnist(train, test, num_tasks=5, val_size=50)
  images, labels, task = jax.jit(tasks.draw_batch, static_argnums=4)(
      ts.test, 3, jax.random.key(1), 0, 64)
  lo, n = int(ts.test.offset[3]), int(ts.test.size[3])
  member = {x.tobytes() for x in np.asarray(ts.test.images[lo:lo + n])}
  assert all(x.tobytes() in member for x in np.asarray(images))
  assert set(np.asarray(labels).tolist()) == {0, 1} and task == 3


# The shuffle compiled, as the batch draw runs it (op by op, its rounds take seconds to dispatch).
permuted_position = jax.jit(tasks.permuted_position, static_argnums=(2, 3))


def id_split(sizes):
  """A split whose labels are the examples' global indices."""
  n = sum(sizes)
  return tasks.Split(images=jnp.zeros((n, 1, 1, 1), jnp.uint8), labels=jnp.arange(n),
                     offset=jnp.asarray(np.cumsum([0] + sizes[:-1])), size=jnp.asarray(sizes),
                     max_size=max(sizes))


# The fast loop: one position alone, a few, and a well-shuffled many.
@pytest.mark.parametrize('n', [1, 3, 4500, *(pytest.param(n, marks=pytest.mark.slow)
                                             for n in (2, 7, 100))])
def test_permuted_position_is_a_permutation(n):
  rounds = tasks.permutation_rounds(n)
  perm = np.asarray(permuted_position([jax.random.key(0)], jnp.arange(n), n, rounds))
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  if n >= 100:  # and a well-shuffled one
    other = np.asarray(permuted_position([jax.random.key(1)], jnp.arange(n), n, rounds))
    assert not np.array_equal(perm, other)
    assert abs(np.corrcoef(np.arange(n), perm)[0, 1]) < 0.1
    assert np.sum(perm == np.arange(n)) < 10  # about 1 fixed point expected


def swap_or_not_written_out(key, positions, n, rounds):
  """permuted_position's rounds in NumPy, one at a time: partner (K - x) mod n, swap on F's bit."""
  key_offsets, key_salts = jax.random.split(key)
  offsets = np.asarray(jax.random.randint(key_offsets, (rounds,), 0, n)).astype(np.uint64)
  salts = np.asarray(jax.random.bits(key_salts, (rounds,), jnp.uint32)).astype(np.uint64)

  def mix(x):  # murmur3's finaliser, modulo 2^32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) % 2 ** 32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) % 2 ** 32
    return x ^ (x >> 16)

  x = np.asarray(positions).astype(np.uint64)
  for r in range(rounds):
    partner = (offsets[r] + n - x) % n
    x = np.where(mix(np.maximum(x, partner) ^ salts[r]) & 1 == 1, partner, x)
  return x


@pytest.mark.parametrize('n,form', [
    (7, 'loop'), (7, 'unrolled'), (60000, 'loop'),
    *(pytest.param(n, form, marks=pytest.mark.slow)
      for n, form in ((60000, 'unrolled'), (1, 'loop'), (4500, 'loop')))])
def test_permuted_position_equals_the_rounds_written_out(monkeypatch, n, form):
  """Either form of the rounds (HYPERMASK_SHUFFLE_ROUNDS: a loop on CPU, straight-line code on
  accelerators) gives the positions of the rounds written out in NumPy."""
  monkeypatch.setenv('HYPERMASK_SHUFFLE_ROUNDS', form)
  rounds = tasks.permutation_rounds(n)
  positions = np.arange(0, n, max(1, n // 300))
  key = jax.random.key(n)
  # A new function: traced with this test's form.
  draw = jax.jit(lambda *args: tasks.permuted_position(*args), static_argnums=(2, 3))
  np.testing.assert_array_equal(draw([key], jnp.asarray(positions), n, rounds),
                                swap_or_not_written_out(key, positions, n, rounds))


def test_each_position_goes_through_its_own_keys_rounds():
  """With two keys and a chain per position (a batch across two epochs), each position is where
  its own key's permutation puts it, as the rounds written out give it."""
  n, keys = 4500, [jax.random.key(3), jax.random.key(4)]
  rounds = tasks.permutation_rounds(n)
  positions = np.arange(0, n, 37)
  chain = np.arange(len(positions)) % 3 == 1
  got = permuted_position(keys, jnp.asarray(positions), n, rounds, jnp.asarray(chain, int))
  want = np.where(chain, swap_or_not_written_out(keys[1], positions, n, rounds),
                  swap_or_not_written_out(keys[0], positions, n, rounds))
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got[chain], swap_or_not_written_out(keys[0], positions[chain], n,
                                                                rounds))


def test_the_shuffle_compiles_to_few_fusions_and_the_image_gather_reads_a_stored_index():
  """XLA:CPU compiles and runs each fusion on its own: the shuffle's rounds (84 for an MNIST task,
  once in each of two epochs' chains) were once one fusion each; and the rounds fused into the
  image gather ran again for every pixel. A fusion holding the round function holds murmur3's
  constant 0x85EBCA6B: one, for the one chain the positions of both epochs go through."""
  split = id_split([12000, 11000]).replace(images=jnp.zeros((23000, 28, 28, 1), jnp.uint8))
  draw = jax.jit(tasks.draw_batch, static_argnums=4)
  hlo = draw.lower(split, 1, jax.random.key(0), 5, 128).compile().as_text()
  computations = re.findall(r'^%[\w.-]+ \(.*?^}', hlo, re.S | re.M)
  rounds = [c for c in computations if f'constant({0x85EBCA6B})' in c]
  assert len(rounds) == 1
  gathers = [c for c in computations if c.splitlines()[0].endswith('-> u8[128,28,28,1] {')]
  assert len(gathers) == 1 and gathers[0] not in rounds


def test_batches_visit_each_example_once_per_epoch():
  split = id_split([50, 37, 60])  # task 1: 37 examples at offset 50
  draw = jax.jit(tasks.draw_batch, static_argnums=4)
  key = jax.random.key(3)
  stream = np.concatenate([np.asarray(draw(split, 1, key, step, 8)[1]) for step in range(14)])
  epochs = [stream[i * 37:(i + 1) * 37] for i in range(3)]  # 14 * 8 = 112 = 3 epochs + 1
  for epoch in epochs:  # batch 4 ends epoch 0 and starts epoch 1: still each example once
    np.testing.assert_array_equal(np.sort(epoch), np.arange(50, 87))
  assert not np.array_equal(epochs[0], epochs[1])
  # Keyed by (key, epoch): the same batch again, whatever was drawn before (resume).
  np.testing.assert_array_equal(draw(split, 1, key, 9, 8)[1], stream[72:80])
  assert not np.array_equal(draw(split, 1, jax.random.key(4), 9, 8)[1], stream[72:80])


def test_joint_batches_cover_the_union_of_the_tasks():
  split = id_split([5, 7, 4])
  tasks_drawn, ids = [], []
  draw = jax.jit(tasks.draw_batch, static_argnums=4)
  for step in range(4):  # 4 * 4 = 16 = one epoch of the 16 examples
    _, labels, example_tasks = draw(split, jnp.arange(3), jax.random.key(0), step, 4)
    ids += np.asarray(labels).tolist()
    tasks_drawn += np.asarray(example_tasks).tolist()
  assert sorted(ids) == list(range(16))
  np.testing.assert_array_equal(tasks_drawn, np.searchsorted([5, 12, 16], ids, side='right'))


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


def prepare_cli(*args, **env):
  return subprocess.run([sys.executable, '-m', 'hypermask_jax.data.prepare', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env={**os.environ, **env})


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
  before = sorted((p.name, p.stat().st_mtime_ns) for p in data_dir.rglob('*'))
  refused = prepare_cli(*args, '--force', HYPERMASK_DECODED_COPY='no')
  assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
      "error: HYPERMASK_DECODED_COPY='no': must be 'on' or 'off' (or unset)"]
  assert sorted((p.name, p.stat().st_mtime_ns) for p in data_dir.rglob('*')) == before


def test_force_reads_the_source_before_removing_the_old_dataset(tmp_path):
  raw = write_mnist_idx(tmp_path / 'raw', *synthetic_mnist(n_train=30, n_test=10))
  data_dir = str(tmp_path / 'tfds')
  prepare.prepare('mnist', str(raw), data_dir)
  (raw / prepare.MNIST_FILES['test'][0]).unlink()
  with pytest.raises(prepare.SourceError, match='not found'):
    prepare.prepare('mnist', str(raw), data_dir, force=True)
  assert prepare.verify('mnist', data_dir) == {'train': 30, 'test': 10}  # still there, intact


def prepared_synthetic_mnist(folder, seed=0):
  """(data_dir, dataset_dir) of 30 + 10 synthetic MNIST examples prepared in folder."""
  raw = write_mnist_idx(folder / 'raw', *synthetic_mnist(n_train=30, n_test=10, seed=seed))
  done = prepare.prepare('mnist', str(raw), str(folder / 'tfds'), force=True)
  return str(folder / 'tfds'), pathlib.Path(done['dataset_dir'])


def tfds_read(data_dir, split):
  return tfds_io.read_split(tfds.builder('mnist', data_dir=data_dir), split)


def test_prepare_leaves_a_decoded_copy_that_a_run_loads_without_tensorflow(tmp_path):
  data_dir, dataset_dir = prepared_synthetic_mnist(tmp_path)
  assert sorted(p.name for p in dataset_dir.glob(decoded_copy.PREFIX + '*')) == [
      'hypermask_jax-test.npz', 'hypermask_jax-train.npz']
  code = ('import sys, numpy as np; from hypermask_jax.data import tfds_io; '
          f'np.savez(sys.argv[1], *tfds_io.load_split("mnist", "train", {data_dir!r}, False), '
          f'*tfds_io.load_split("mnist", "test", {data_dir!r}, False)); '
          'print("tensorflow" in sys.modules)')
  run = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'loaded.npz')], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip() == 'False'  # TensorFlow was never imported
  with np.load(tmp_path / 'loaded.npz') as loaded:
    got = [loaded[f'arr_{i}'] for i in range(4)]
  want = [*tfds_read(data_dir, 'train'), *tfds_read(data_dir, 'test')]
  for g, w in zip(got, want):  # the same arrays, in TFDS's order, with its dtypes
    assert g.dtype == w.dtype and g.dtype in (np.uint8, np.int32)
    np.testing.assert_array_equal(g, w)


def test_the_decoded_copy_follows_the_dataset_files(tmp_path):
  data_dir, dataset_dir = prepared_synthetic_mnist(tmp_path)
  load = lambda: tfds_io.load_split('mnist', 'train', data_dir, download=False)
  images, labels = load()
  decoded_copy.save(str(dataset_dir), 'train', images[::-1], labels[::-1])
  np.testing.assert_array_equal(load()[1], labels[::-1])  # the copy is what a run loads
  (dataset_dir / 'hypermask_jax-train.npz').unlink()
  np.testing.assert_array_equal(load()[1], labels)  # none: read through TFDS, and written again
  np.testing.assert_array_equal(decoded_copy.load(str(dataset_dir), 'train')[1], labels)
  # Any change to the dataset's files (here only a record's time) makes the copy stale.
  decoded_copy.save(str(dataset_dir), 'train', images[::-1], labels[::-1])
  record = next(dataset_dir.glob('mnist-train.tfrecord*'))
  os.utime(record, ns=(record.stat().st_atime_ns, record.stat().st_mtime_ns + 1))
  np.testing.assert_array_equal(load()[1], labels)  # read through TFDS, and written again
  np.testing.assert_array_equal(decoded_copy.load(str(dataset_dir), 'train')[1], labels)
  # A rebuild from other raw files writes a copy of the new data.
  data_dir, _ = prepared_synthetic_mnist(tmp_path, seed=1)
  np.testing.assert_array_equal(load()[0], tfds_read(data_dir, 'train')[0])
  assert not np.array_equal(load()[0], images)
  # A damaged record is reported, not hidden by the copy.
  record = next(dataset_dir.glob('mnist-train.tfrecord*'))
  record.write_bytes(record.read_bytes()[:-100])
  with pytest.raises(tfds_io.DatasetUnavailableError, match='is damaged'):
    load()


def test_mock_data_neither_reads_nor_writes_the_decoded_copy(tmp_path):
  data_dir, dataset_dir = prepared_synthetic_mnist(tmp_path)
  copy = (dataset_dir / 'hypermask_jax-train.npz').read_bytes()
  with tfds.testing.mock_data(num_examples=12, data_dir=data_dir):
    images, _ = tfds_io.load_split('mnist', 'train', data_dir, download=False)
  assert len(images) == 12  # made up by the mock, not the 30 prepared
  assert (dataset_dir / 'hypermask_jax-train.npz').read_bytes() == copy


def test_decoded_copies_can_be_turned_off(tmp_path, monkeypatch):
  monkeypatch.setenv('HYPERMASK_DECODED_COPY', 'off')
  data_dir, dataset_dir = prepared_synthetic_mnist(tmp_path)
  assert not list(dataset_dir.glob(decoded_copy.PREFIX + '*'))  # prepare wrote none
  images, labels = tfds_io.load_split('mnist', 'train', data_dir, download=False)
  assert not list(dataset_dir.glob(decoded_copy.PREFIX + '*'))  # nor did the run
  decoded_copy.save(str(dataset_dir), 'train', images[::-1], labels[::-1])
  np.testing.assert_array_equal(  # a copy left from before is not read
      tfds_io.load_split('mnist', 'train', data_dir, download=False)[1], labels)
  monkeypatch.setenv('HYPERMASK_DECODED_COPY', 'on')
  np.testing.assert_array_equal(  # with copies on, that copy is the one read
      tfds_io.load_split('mnist', 'train', data_dir, download=False)[1], labels[::-1])
  monkeypatch.setenv('HYPERMASK_DECODED_COPY', 'no')
  for bad in (lambda: tfds_io.load_split('mnist', 'train', data_dir, download=False),
              lambda: prepared_synthetic_mnist(tmp_path)):  # named, not reported as damage
    with pytest.raises(errors.BadInput, match=r"^HYPERMASK_DECODED_COPY='no': must be 'on' or "
                       r"'off' \(or unset\)$"):
      bad()


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
