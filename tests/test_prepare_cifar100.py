"""The offline importer on a small tarball in the CIFAR-100 python format."""

import io
import pickle
import tarfile

import numpy as np
import pytest

from hypermask_jax.data import prepare
from hypermask_jax.data import tfds_io


def make_split(n, seed):
  """Images as [N, 32, 32, 3] whose red, green and blue planes and rows all differ."""
  rs = np.random.RandomState(seed)
  # Random per pixel, and each channel in its own residue mod 3: red 0, green 1, blue 2.
  images = (rs.randint(0, 85, (n, 32, 32, 1)) * 3 + np.arange(3)).astype(np.uint8)
  fine = rs.choice([3, 97], n)  # two fine classes, one near each end of the range
  coarse = np.where(fine == 3, 1, 18)
  return images, fine, coarse


def write_tarball(path, splits, members=None, data_fn=None):
  """Writes cifar-100-python.tar.gz as the CIFAR site does: pickled dicts with bytes keys."""
  meta = {b'fine_label_names': [f'fine{i}'.encode() for i in range(100)],
          b'coarse_label_names': [f'coarse{i}'.encode() for i in range(20)]}
  payloads = {'meta': meta}
  for split, (images, fine, coarse) in splits.items():
    # One row per image: the 1024 red, then 1024 green, then 1024 blue values, each row-major.
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    payloads[split] = {b'data': data_fn(data) if data_fn else data,
                       b'fine_labels': [int(y) for y in fine],
                       b'coarse_labels': [int(y) for y in coarse],
                       b'filenames': [f'img_{i}.png'.encode() for i in range(len(images))]}
  with tarfile.open(path, 'w:gz') as tar:
    for name in members or ('train', 'test', 'meta'):
      blob = pickle.dumps(payloads[name], protocol=2)
      info = tarfile.TarInfo(f'cifar-100-python/{name}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))


def sorted_pairs(images, labels):
  """(image, label) pairs sorted by label then image bytes, as TFDS shuffles the order."""
  order = sorted(range(len(labels)), key=lambda i: (int(labels[i]), images[i].tobytes()))
  return images[order], np.asarray(labels)[order]


def test_cifar100_round_trip(tmp_path):
  splits = {'train': make_split(30, seed=0), 'test': make_split(10, seed=1)}
  src = tmp_path / 'raw'
  src.mkdir()
  write_tarball(src / prepare.CIFAR100_TARBALL, splits)
  data_dir = str(tmp_path / 'tfds')
  assert prepare.prepare('cifar100', str(src), data_dir)['written']
  assert not prepare.prepare('cifar100', str(src), data_dir)['written']  # verified, not rebuilt
  for split, (images, fine, _) in splits.items():
    got_images, got_labels = tfds_io.load_split('cifar100', split, data_dir, download=False)
    assert got_images.shape == (len(fine), 32, 32, 3)
    want_images, want_labels = sorted_pairs(images, fine)
    got_images, got_labels = sorted_pairs(got_images, got_labels)
    np.testing.assert_array_equal(got_images, want_images)
    np.testing.assert_array_equal(got_labels, want_labels)


def test_cifar100_catalogue_features_and_ids(tmp_path):
  """The written dataset carries the catalogue's features, so code written for it reads ours."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = {'train': make_split(5, seed=2), 'test': make_split(3, seed=3)}
  write_tarball(tmp_path / prepare.CIFAR100_TARBALL, splits)
  data_dir = str(tmp_path / 'tfds')
  prepare.prepare('cifar100', str(tmp_path), data_dir)
  builder = tfds.builder('cifar100', data_dir=data_dir)
  assert str(builder.version) == str(tfds.builder_cls('cifar100').VERSION)
  assert builder.info.features['label'].names[97] == 'fine97'
  assert builder.info.features['coarse_label'].num_classes == 20
  by_id = {ex['id'].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split='test'))}
  assert sorted(by_id) == ['test_00000', 'test_00001', 'test_00002']
  images, fine, coarse = splits['test']
  for i in range(3):
    ex = by_id[f'test_{i:05d}']  # the id is the index in the source file, as in the catalogue
    np.testing.assert_array_equal(ex['image'], images[i])
    assert (ex['label'], ex['coarse_label']) == (fine[i], coarse[i])


def test_cifar100_missing_tarball_names_the_path(tmp_path):
  with pytest.raises(prepare.SourceError, match='not found') as e:
    prepare.prepare('cifar100', str(tmp_path), str(tmp_path / 'tfds'))
  assert str(tmp_path / prepare.CIFAR100_TARBALL) in str(e.value)


@pytest.mark.parametrize('members, data_fn, fine_n, match', [
    (('train', 'meta'), None, None, "no member 'cifar-100-python/test'"),
    (None, lambda d: d[:, :3000], None, r'expected uint8 \[N, 3072\]'),
    (None, None, 9, '10 images but 9 fine_labels'),
])
def test_cifar100_rejects_a_bad_tarball(tmp_path, members, data_fn, fine_n, match):
  splits = {'train': make_split(4, seed=4), 'test': make_split(10, seed=5)}
  if fine_n is not None:
    images, fine, coarse = splits['test']
    splits['test'] = (images, fine[:fine_n], coarse)
  write_tarball(tmp_path / prepare.CIFAR100_TARBALL, splits, members, data_fn)
  with pytest.raises(prepare.SourceError, match=match) as e:
    prepare.read_cifar100(str(tmp_path))
  assert str(tmp_path / prepare.CIFAR100_TARBALL) in str(e.value)


def test_cifar100_refuses_foreign_pickle_globals(tmp_path):
  """A pickle is code: the reader must not run anything beyond rebuilding numpy arrays."""
  with tarfile.open(tmp_path / prepare.CIFAR100_TARBALL, 'w:gz') as tar:
    blob = pickle.dumps({b'x': print}, protocol=2)  # a global the CIFAR format never needs
    info = tarfile.TarInfo('cifar-100-python/meta')
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))
  with pytest.raises(prepare.SourceError, match=r'refusing global \w+\.print'):
    prepare.read_cifar100(str(tmp_path))


def test_cifar100_names_a_truncated_tarball(tmp_path):
  splits = {'train': make_split(40, seed=6), 'test': make_split(10, seed=7)}
  path = tmp_path / prepare.CIFAR100_TARBALL
  write_tarball(path, splits)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(prepare.SourceError) as e:
    prepare.read_cifar100(str(tmp_path))
  assert str(e.value).startswith(f'{path}: not a complete gzipped tarball (')
