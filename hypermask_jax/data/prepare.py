"""Offline importer: builds a TFDS dataset from raw files, so `tfds.load` works with no network.

  python -m hypermask_jax.data.prepare mnist --source_dir DIR --data_dir DIR
  python -m hypermask_jax.data.prepare cifar100 --source_dir DIR --data_dir DIR

Raw files expected in --source_dir:
  mnist:    the four gzipped IDX files (train-images-idx3-ubyte.gz, ...).
  cifar100: cifar-100-python.tar.gz, the CIFAR-100 "python version" tarball.

The result has the name, version, features, splits and example keys of the
TFDS catalogue dataset, so `tfds.load('mnist', data_dir=DIR)` (or 'cifar100')
reads it unchanged.
"""

import codecs
import gzip
import os
import pickle
import sys
import tarfile

from absl import app
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

_SOURCE_DIR = flags.DEFINE_string('source_dir', None, 'Folder with the raw files.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir to write into.')

MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def read_idx(path):
  """Parses one gzipped IDX file (the MNIST format) into a numpy array."""
  with gzip.open(path, 'rb') as f:
    data = f.read()
  if data[:2] != b'\x00\x00' or data[2] != 0x08:
    raise ValueError(f'{path}: not an unsigned-byte IDX file')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f'{path}: header says {shape}, file holds {array.size} bytes')
  return array.reshape(shape)


def read_mnist(source_dir):
  """Returns {split: (images [N, 28, 28, 1], labels [N])} from the four IDX files."""
  splits = {}
  for split, (images_file, labels_file) in MNIST_FILES.items():
    images = read_idx(os.path.join(source_dir, images_file))
    labels = read_idx(os.path.join(source_dir, labels_file))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
      raise ValueError(f'{split}: images {images.shape} do not match labels {labels.shape}')
    splits[split] = (images[..., None], labels.astype(np.int64))
  return splits


def mnist_features():
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(28, 28, 1)),
      'label': tfds.features.ClassLabel(num_classes=10),
  })


def mnist_examples(source_dir):
  """Returns (features, {split: [(key, example)]}) keyed by index, as the catalogue's mnist."""
  examples = {
      split: [(i, {'image': x, 'label': y}) for i, (x, y) in enumerate(zip(*arrays))]
      for split, arrays in read_mnist(source_dir).items()
  }
  return mnist_features(), examples


CIFAR100_TARBALL = 'cifar-100-python.tar.gz'
CIFAR100_MEMBERS = {
    'train': 'cifar-100-python/train',
    'test': 'cifar-100-python/test',
    'meta': 'cifar-100-python/meta',
}
CIFAR100_CLASSES = {'label': 100, 'coarse_label': 20}

# The only globals a CIFAR pickle (Python 2 cPickle, or a Python 3 rewrite of it) needs: a
# dict of bytes, lists and one uint8 numpy array. Anything else is refused, not executed.
_PICKLE_GLOBALS = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.multiarray', '_reconstruct'): np.array(0).__reduce__()[0],
    ('numpy._core.multiarray', '_reconstruct'): np.array(0).__reduce__()[0],
    ('numpy.core.numeric', '_frombuffer'): np.array([0]).__reduce_ex__(5)[0],
    ('numpy._core.numeric', '_frombuffer'): np.array([0]).__reduce_ex__(5)[0],
    ('_codecs', 'encode'): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the numpy and codecs globals a CIFAR batch holds."""

  def find_class(self, module, name):
    if (module, name) not in _PICKLE_GLOBALS:
      raise pickle.UnpicklingError(f'refusing global {module}.{name}')
    return _PICKLE_GLOBALS[(module, name)]


def _read_pickle_member(tar, tar_path, member):
  """Unpickles one member of the open tarball (bytes keys, as the CIFAR site prescribes)."""
  try:
    f = tar.extractfile(member)
  except KeyError:
    raise ValueError(f'{tar_path}: has no member {member!r}') from None
  if f is None:
    raise ValueError(f'{tar_path}: member {member!r} is not a regular file')
  with f:
    try:
      obj = _CifarUnpickler(f, encoding='bytes').load()
    except Exception as e:  # pickle raises many types on a damaged or foreign stream.
      raise ValueError(f'{tar_path}: member {member!r} is not a CIFAR pickle '
                       f'({type(e).__name__}: {e})') from e
  if not isinstance(obj, dict):
    raise ValueError(f'{tar_path}: member {member!r} holds {type(obj).__name__}, not a dict')
  return obj


def _field(batch, key, tar_path, member):
  if key not in batch:
    raise ValueError(f'{tar_path}: member {member!r} has no {key!r} entry '
                     f'(has {sorted(batch)})')
  return batch[key]


def read_cifar100(source_dir):
  """Returns ({'label'|'coarse_label': names}, {split: (images [N, 32, 32, 3], fine [N], coarse [N])})."""
  tar_path = os.path.join(source_dir, CIFAR100_TARBALL)
  if not os.path.isfile(tar_path):
    raise ValueError(f'{tar_path}: not found; download the CIFAR-100 python version '
                     f'({CIFAR100_TARBALL}) into --source_dir')
  try:
    tar = tarfile.open(tar_path, 'r:gz')
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f'{tar_path}: not a gzipped tarball ({type(e).__name__}: {e})') from e
  with tar:
    meta_member = CIFAR100_MEMBERS['meta']
    meta = _read_pickle_member(tar, tar_path, meta_member)
    names = {}
    for key, meta_key in (('label', b'fine_label_names'), ('coarse_label', b'coarse_label_names')):
      names[key] = [n.decode() if isinstance(n, bytes) else str(n)
                    for n in _field(meta, meta_key, tar_path, meta_member)]
      if len(names[key]) != CIFAR100_CLASSES[key]:
        raise ValueError(f'{tar_path}: {meta_member!r} lists {len(names[key])} '
                         f'{meta_key.decode()}, expected {CIFAR100_CLASSES[key]}')
    splits = {}
    for split in ('train', 'test'):
      member = CIFAR100_MEMBERS[split]
      batch = _read_pickle_member(tar, tar_path, member)
      data = np.asarray(_field(batch, b'data', tar_path, member))
      if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f'{tar_path}: {member!r} data is {data.dtype} {data.shape}, '
                         'expected uint8 [N, 3072]')
      # Each row is the red, then green, then blue 32x32 plane, each row-major: CHW -> HWC.
      images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      labels = []
      for key, batch_key in (('label', b'fine_labels'), ('coarse_label', b'coarse_labels')):
        y = np.asarray(_field(batch, batch_key, tar_path, member), np.int64).reshape(-1)
        if y.shape[0] != images.shape[0]:
          raise ValueError(f'{tar_path}: {member!r} has {images.shape[0]} images but '
                           f'{y.shape[0]} {batch_key.decode()}')
        if y.size and (y.min() < 0 or y.max() >= CIFAR100_CLASSES[key]):
          raise ValueError(f'{tar_path}: {member!r} {batch_key.decode()} outside '
                           f'[0, {CIFAR100_CLASSES[key]})')
        labels.append(y)
      splits[split] = (np.ascontiguousarray(images), *labels)
  return names, splits


def cifar100_examples(source_dir):
  """Returns (features, {split: [(key, example)]}) with the catalogue cifar100's keys and ids.

  The catalogue builds from the binary tarball (cifar-100-binary.tar.gz); the python
  tarball read here holds the same images, labels and label names in the same order, so
  the integer keys (the example index, which TFDS hashes to shuffle) and the ids
  ('train_00000', ...) come out the same, and the shuffled order after `tfds.load`
  should too (it also needs the same shard count, which follows from the encoded
  size; not checked against a real catalogue build). The only other difference: the
  written dataset_info has no supervised_keys (the ad-hoc builder cannot record
  them), so `as_supervised=True` is not available; read 'image' and 'label' instead.
  """
  names, splits = read_cifar100(source_dir)
  features = tfds.features.FeaturesDict({
      'id': tfds.features.Text(),
      'image': tfds.features.Image(shape=(32, 32, 3)),
      'label': tfds.features.ClassLabel(names=names['label']),
      'coarse_label': tfds.features.ClassLabel(names=names['coarse_label']),
  })
  examples = {}
  for split, (images, fine, coarse) in splits.items():
    examples[split] = [
        (i, {'id': f'{split}_{i:05d}', 'image': images[i], 'label': fine[i],
             'coarse_label': coarse[i]})
        for i in range(images.shape[0])
    ]
  return features, examples


# name -> reader(source_dir) returning (features, {split: [(key, example)]}).
READERS = {'mnist': mnist_examples, 'cifar100': cifar100_examples}


def prepare(name, source_dir, data_dir):
  """Writes dataset `name` into data_dir; returns False if it was already there."""
  if name not in READERS:
    raise ValueError(f'unknown dataset {name!r}; the importer knows {sorted(READERS)}')
  catalogue = tfds.builder(name, data_dir=data_dir)
  if catalogue.is_prepared():
    return False
  features, examples = READERS[name](source_dir)
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=str(catalogue.VERSION), features=features,
      split_datasets=examples, data_dir=data_dir,
      description=catalogue.info.description, homepage=catalogue.info.homepage,
      citation=catalogue.info.citation)
  return True


def main(argv):
  if len(argv) != 2 or not _SOURCE_DIR.value or not _DATA_DIR.value:
    sys.exit(f'usage: python -m hypermask_jax.data.prepare {{{",".join(READERS)}}} '
             '--source_dir DIR --data_dir DIR\n'
             f'  mnist: DIR holds the four gzipped IDX files ({MNIST_FILES["train"][0]}, ...)\n'
             f'  cifar100: DIR holds {CIFAR100_TARBALL} (the CIFAR-100 python version)')
  name = argv[1]
  try:
    written = prepare(name, _SOURCE_DIR.value, _DATA_DIR.value)
  except (ValueError, OSError) as e:
    sys.exit(f'error: {e}')
  print(f"{name}: {'prepared' if written else 'already prepared'} in {_DATA_DIR.value}")


if __name__ == '__main__':
  app.run(main)
