"""Offline importer: builds a TFDS dataset from raw files, so `tfds.load` works with no network.

  python -m hypermask_jax.data.prepare mnist --source_dir DIR --data_dir DIR [--force]
  python -m hypermask_jax.data.prepare cifar100 --source_dir DIR --data_dir DIR [--force]
  python -m hypermask_jax.data.prepare tiny_imagenet --source_dir DIR --data_dir DIR [--force]

A dataset that is already prepared is not rebuilt: it is read back in full
and reported intact or damaged; --force rebuilds it (the raw files are read
first, so a bad source leaves the old dataset in place). Exit status 0 when
the dataset is there and intact, 2 with one line naming the file otherwise.

Raw files expected in --source_dir:
  mnist:    the four gzipped IDX files (train-images-idx3-ubyte.gz, ...).
  cifar100: cifar-100-python.tar.gz, the CIFAR-100 "python version" tarball.
  tiny_imagenet: tiny-imagenet-200.zip, the standard Tiny ImageNet archive.

The result has the name, version, features, splits and example keys of the
TFDS catalogue dataset, so `tfds.load('mnist', data_dir=DIR)` (or 'cifar100')
reads it unchanged. Tiny ImageNet is not in the catalogue: `tfds.load(
'tiny_imagenet', data_dir=DIR)` reads the dataset written here (splits
'train' and 'validation', features 'id', 'image' and 'label').
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's start-up noise
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import codecs  # pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import gzip
import io
import pickle
import sys
import tarfile
import tempfile
import zipfile
import zlib

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from hypermask_jax import errors
from hypermask_jax import paths
from hypermask_jax.data import decoded_copy
from hypermask_jax.data import tfds_io

_SOURCE_DIR = flags.DEFINE_string('source_dir', None, 'Folder with the raw files.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir to write into.')
_FORCE = flags.DEFINE_bool('force', False, 'Rebuild the dataset even if it is already prepared.')


class SourceError(errors.BadInput):
  """A raw file is missing, truncated or not in the expected format."""

MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def read_idx(path):
  """Parses one gzipped IDX file (the MNIST format) into a numpy array."""
  if not os.path.isfile(path):
    raise SourceError(f'{path}: not found; --source_dir must hold the four MNIST IDX .gz files')
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # not gzip (BadGzipFile), or cut short
    raise SourceError(f'{path}: not a complete gzip file ({type(e).__name__}: {e}); '
                      'download it again') from None
  if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
    raise SourceError(f'{path}: not an unsigned-byte IDX file')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise SourceError(f'{path}: header says {shape}, file holds {array.size} bytes')
  return array.reshape(shape)


def read_mnist(source_dir):
  """Returns {split: (images [N, 28, 28, 1], labels [N])} from the four IDX files."""
  splits = {}
  for split, (images_file, labels_file) in MNIST_FILES.items():
    images = read_idx(os.path.join(source_dir, images_file))
    labels = read_idx(os.path.join(source_dir, labels_file))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
      raise SourceError(f'{source_dir}: {split} images {images.shape} do not match labels '
                        f'{labels.shape}')
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
    raise SourceError(f'{tar_path}: has no member {member!r}') from None
  if f is None:
    raise SourceError(f'{tar_path}: member {member!r} is not a regular file')
  with f:
    try:
      obj = _CifarUnpickler(f, encoding='bytes').load()
    except Exception as e:  # pickle raises many types on a damaged or foreign stream.
      raise SourceError(f'{tar_path}: member {member!r} is not a CIFAR pickle '
                        f'({type(e).__name__}: {e})') from e
  if not isinstance(obj, dict):
    raise SourceError(f'{tar_path}: member {member!r} holds {type(obj).__name__}, not a dict')
  return obj


def _field(batch, key, tar_path, member):
  if key not in batch:
    raise SourceError(f'{tar_path}: member {member!r} has no {key!r} entry '
                      f'(has {sorted(batch)})')
  return batch[key]


def read_cifar100(source_dir):
  """Returns ({'label'|'coarse_label': names}, {split: (images [N, 32, 32, 3], fine [N], coarse [N])})."""
  tar_path = os.path.join(source_dir, CIFAR100_TARBALL)
  if not os.path.isfile(tar_path):
    raise SourceError(f'{tar_path}: not found; download the CIFAR-100 python version '
                      f'({CIFAR100_TARBALL}) into --source_dir')
  try:
    with tarfile.open(tar_path, 'r:gz') as tar:
      return _read_cifar100_members(tar, tar_path)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # not gzip, or cut short
    raise SourceError(f'{tar_path}: not a complete gzipped tarball ({type(e).__name__}: {e}); '
                      'download it again') from None


def _read_cifar100_members(tar, tar_path):
  """The label names and splits from the open CIFAR-100 python tarball."""
  meta_member = CIFAR100_MEMBERS['meta']
  meta = _read_pickle_member(tar, tar_path, meta_member)
  names = {}
  for key, meta_key in (('label', b'fine_label_names'), ('coarse_label', b'coarse_label_names')):
    names[key] = [n.decode() if isinstance(n, bytes) else str(n)
                  for n in _field(meta, meta_key, tar_path, meta_member)]
    if len(names[key]) != CIFAR100_CLASSES[key]:
      raise SourceError(f'{tar_path}: {meta_member!r} lists {len(names[key])} '
                        f'{meta_key.decode()}, expected {CIFAR100_CLASSES[key]}')
  splits = {}
  for split in ('train', 'test'):
    member = CIFAR100_MEMBERS[split]
    batch = _read_pickle_member(tar, tar_path, member)
    data = np.asarray(_field(batch, b'data', tar_path, member))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
      raise SourceError(f'{tar_path}: {member!r} data is {data.dtype} {data.shape}, '
                        'expected uint8 [N, 3072]')
    # Each row is the red, then green, then blue 32x32 plane, each row-major: CHW -> HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = []
    for key, batch_key in (('label', b'fine_labels'), ('coarse_label', b'coarse_labels')):
      y = np.asarray(_field(batch, batch_key, tar_path, member), np.int64).reshape(-1)
      if y.shape[0] != images.shape[0]:
        raise SourceError(f'{tar_path}: {member!r} has {images.shape[0]} images but '
                          f'{y.shape[0]} {batch_key.decode()}')
      if y.size and (y.min() < 0 or y.max() >= CIFAR100_CLASSES[key]):
        raise SourceError(f'{tar_path}: {member!r} {batch_key.decode()} outside '
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


TINY_IMAGENET_ZIP = 'tiny-imagenet-200.zip'
TINY_IMAGENET_ROOT = 'tiny-imagenet-200'
TINY_IMAGENET_SHAPE = (64, 64, 3)
# Not in the TFDS catalogue: the version and texts the written dataset carries.
TINY_IMAGENET_TEXTS = {
    'version': '1.0.0',
    'description': ('Tiny ImageNet: 200 ImageNet classes of 64x64 colour images, 500 training '
                    'and 50 labelled validation images per class (grey images made RGB). '
                    'Imported by hypermask_jax.data.prepare from ' + TINY_IMAGENET_ZIP + '.'),
    'homepage': 'http://cs231n.stanford.edu/',
    'citation': ''}


def _decode_image(data, archive, member):
  """An image file's RGB pixels [64, 64, 3] (a grey image's one channel repeated)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TFDS imports it anyway)
  try:
    image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
  except tf.errors.OpError as e:
    raise SourceError(f'{archive}: {member} is not a readable image ({e.message.splitlines()[0]})'
                      ) from None
  if image.shape != TINY_IMAGENET_SHAPE:
    raise SourceError(f'{archive}: {member} is {image.shape[1]}x{image.shape[0]}, expected 64x64')
  return image


def _zip_text(archive, names, path, member):
  if member not in names:
    raise SourceError(f'{path}: has no {member}; is it the standard {TINY_IMAGENET_ZIP}?')
  return archive.read(member).decode('utf-8', errors='replace')


def read_tiny_imagenet(source_dir):
  """Returns (wnids, {split: [(file name, image [64, 64, 3], label)]}) from tiny-imagenet-200.zip.

  The label is the class's line in wnids.txt. 'train' comes from
  train/<wnid>/images/*.JPEG, 'validation' from val/images with the classes of
  val/val_annotations.txt (in its order); the unlabelled test images are left out.
  """
  path = os.path.join(source_dir, TINY_IMAGENET_ZIP)
  if not os.path.isfile(path):
    raise SourceError(f'{path}: not found; put {TINY_IMAGENET_ZIP} (the standard Tiny ImageNet '
                      'archive) in --source_dir')
  try:
    with zipfile.ZipFile(path) as archive:
      return _read_tiny_imagenet_members(archive, path)
  except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:  # not a zip, or cut short
    raise SourceError(f'{path}: not a complete zip archive ({type(e).__name__}: {e}); download '
                      'it again') from None


def _read_tiny_imagenet_members(archive, path):
  root = TINY_IMAGENET_ROOT
  names = set(archive.namelist())
  wnids = _zip_text(archive, names, path, f'{root}/wnids.txt').split()
  if not wnids or len(set(wnids)) != len(wnids):
    raise SourceError(f'{path}: {root}/wnids.txt must list distinct class ids, one per line')
  label = {wnid: i for i, wnid in enumerate(wnids)}
  splits = {'train': [], 'validation': []}
  for wnid in wnids:
    prefix = f'{root}/train/{wnid}/images/'
    members = sorted(n for n in names if n.startswith(prefix) and n.lower().endswith('.jpeg'))
    if not members:
      raise SourceError(f'{path}: class {wnid} has no images in {prefix}')
    splits['train'] += [(m.rsplit('/', 1)[1], _decode_image(archive.read(m), path, m),
                         label[wnid]) for m in members]
  annotations = _zip_text(archive, names, path, f'{root}/val/val_annotations.txt')
  for number, line in enumerate(annotations.splitlines(), 1):
    if not line.strip():
      continue
    fields = line.split('	')
    if len(fields) < 2 or fields[1] not in label:
      raise SourceError(f'{path}: {root}/val/val_annotations.txt line {number}: expected '
                        f'"FILE<tab>WNID..." with a class of wnids.txt, got {line[:80]!r}')
    member = f'{root}/val/images/{fields[0]}'
    if member not in names:
      raise SourceError(f'{path}: has no {member} (named in val_annotations.txt line {number})')
    splits['validation'].append((fields[0], _decode_image(archive.read(member), path, member),
                                 label[fields[1]]))
  if not splits['validation']:
    raise SourceError(f'{path}: {root}/val/val_annotations.txt lists no images')
  return wnids, splits


def tiny_imagenet_examples(source_dir):
  """Returns (features, {split: [(key, example)]}), keyed by the position in the split."""
  wnids, splits = read_tiny_imagenet(source_dir)
  features = tfds.features.FeaturesDict({
      'id': tfds.features.Text(),
      'image': tfds.features.Image(shape=TINY_IMAGENET_SHAPE),
      'label': tfds.features.ClassLabel(names=wnids),
  })
  return features, {split: [(i, {'id': name, 'image': image, 'label': y})
                            for i, (name, image, y) in enumerate(examples)]
                    for split, examples in splits.items()}


# name -> reader(source_dir) returning (features, {split: [(key, example)]}).
READERS = {'mnist': mnist_examples, 'cifar100': cifar100_examples,
           'tiny_imagenet': tiny_imagenet_examples}
# Datasets the TFDS catalogue lacks: the texts they are written with.
NOT_IN_CATALOGUE = {'tiny_imagenet': TINY_IMAGENET_TEXTS}


def _catalogue_texts(name):
  """The catalogue dataset's version and texts, read on an empty data_dir (whatever DIR holds)."""
  if name in NOT_IN_CATALOGUE:
    return dict(NOT_IN_CATALOGUE[name])
  with tempfile.TemporaryDirectory() as empty:
    info = tfds.builder(name, data_dir=empty).info
    return {'version': str(info.version), 'description': info.description,
            'homepage': info.homepage, 'citation': info.citation}


@contextlib.contextmanager
def _quiet():
  """Silences TFDS while it writes: no progress bars, logs or "downloaded" messages."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logging.set_verbosity(verbosity)


def verify(name, data_dir, source_dir=None):
  """Reads every split of a prepared dataset back in full: {split: number of examples}.

  Raises tfds_io.DatasetUnavailableError, naming the --force command, if a file
  is damaged or a split holds fewer examples than its metadata says.
  """
  dataset_dir = epath.Path(data_dir) / name
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    dataset_dir = builder.data_dir
    counts = {}
    for split, info in builder.info.splits.items():
      images, labels = tfds_io.read_split(builder, split)
      counts[split] = len(labels)
      if counts[split] != info.num_examples:
        raise ValueError(f'split {split!r} holds {counts[split]} of its {info.num_examples} '
                         'examples')
      if tfds_io.keeps_decoded_copy(builder.data_dir):  # so that the first run skips TensorFlow
        decoded_copy.save(builder.data_dir, split, images, labels)
    return counts
  except Exception as e:  # pylint: disable=broad-except  (damage shows as many error types)
    raise tfds_io.damaged_error(name, dataset_dir, data_dir, e, source_dir) from None


def prepare(name, source_dir, data_dir, force=False):
  """Makes dataset `name` available in data_dir; returns what it found and did.

  {'written': whether it was (re)built, 'dataset_dir': its folder, 'counts':
  {split: examples read back}}. An existing dataset is only verified unless
  `force`; with `force` the raw files are read before the old one is removed.
  """
  if name not in READERS:
    raise SourceError(f'unknown dataset {name!r}; the importer knows {sorted(READERS)}')
  decoded_copy.enabled()  # a bad HYPERMASK_DECODED_COPY stops it before it writes, not verify
  data_dir = paths.absolute(data_dir)
  texts = _catalogue_texts(name)
  dataset_dir = epath.Path(data_dir) / name / texts['version']
  if dataset_dir.exists() and not force:
    return {'written': False, 'dataset_dir': str(dataset_dir),
            'counts': verify(name, data_dir, source_dir)}
  features, examples = READERS[name](source_dir)
  if dataset_dir.exists():
    dataset_dir.rmtree()
  with _quiet():
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, features=features, split_datasets=examples, data_dir=data_dir, **texts)
  return {'written': True, 'dataset_dir': str(dataset_dir),
          'counts': verify(name, data_dir, source_dir)}


USAGE = (f'usage: python -m hypermask_jax.data.prepare {{{",".join(READERS)}}} --source_dir DIR '
         f'--data_dir DIR [--force] (mnist: DIR holds the four IDX .gz files, '
         f'{MNIST_FILES["train"][0]} and the others; cifar100: DIR holds {CIFAR100_TARBALL}; '
         f'tiny_imagenet: DIR holds {TINY_IMAGENET_ZIP})')


def main(argv):
  if len(argv) != 2 or not _SOURCE_DIR.value or not _DATA_DIR.value:
    print(USAGE, file=sys.stderr)
    sys.exit(errors.EXIT_BAD_INPUT)
  name = argv[1]
  logging.set_verbosity(logging.WARNING)  # TFDS's INFO lines: this command prints its own
  try:
    done = prepare(name, _SOURCE_DIR.value, _DATA_DIR.value, _FORCE.value)
  except errors.BadInput as e:
    errors.exit_bad_input(e)
  counts = ', '.join(f'{split} {n}' for split, n in sorted(done['counts'].items(),
                                                            key=lambda item: -item[1]))
  if done['written']:
    print(f'{name}: read the raw files in {paths.absolute(_SOURCE_DIR.value)}')
    print(f"{name}: wrote {done['dataset_dir']}")
    print(f'{name}: read back intact: {counts} examples')
  else:
    print(f"{name}: already prepared in {done['dataset_dir']}; read back intact: {counts} "
          'examples (--force rebuilds it)')


if __name__ == '__main__':
  app.run(main)
