"""Offline importer: builds a TFDS dataset from raw files, so `tfds.load` works with no network.

  python -m hypermask_jax.data.prepare mnist --source_dir DIR --data_dir DIR

The result has the name, version, features and splits of the TFDS catalogue
dataset, so `tfds.load('mnist', data_dir=DIR)` reads it unchanged.
"""

import gzip
import os
import sys

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


READERS = {'mnist': (read_mnist, mnist_features)}


def prepare(name, source_dir, data_dir):
  """Writes dataset `name` into data_dir; returns False if it was already there."""
  if name not in READERS:
    raise ValueError(f'unknown dataset {name!r}; the importer knows {sorted(READERS)}')
  version = tfds.builder_cls(name).VERSION
  if tfds.builder(name, data_dir=data_dir).is_prepared():
    return False
  read, features = READERS[name]
  splits = read(source_dir)
  examples = {
      split: [(i, {'image': x, 'label': y}) for i, (x, y) in enumerate(zip(*arrays))]
      for split, arrays in splits.items()
  }
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=str(version), features=features(),
      split_datasets=examples, data_dir=data_dir)
  return True


def main(argv):
  if len(argv) != 2 or not _SOURCE_DIR.value or not _DATA_DIR.value:
    sys.exit(f'usage: python -m hypermask_jax.data.prepare {{{",".join(READERS)}}} '
             '--source_dir DIR --data_dir DIR')
  name = argv[1]
  try:
    written = prepare(name, _SOURCE_DIR.value, _DATA_DIR.value)
  except (ValueError, OSError) as e:
    sys.exit(f'error: {e}')
  print(f"{name}: {'prepared' if written else 'already prepared'} in {_DATA_DIR.value}")


if __name__ == '__main__':
  app.run(main)
