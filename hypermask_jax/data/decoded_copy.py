"""A decoded copy of each prepared split beside its TFDS files: runs load it without TensorFlow.

TFDS reads a split through tf.data: in every process that trains, importing
TensorFlow takes about 5 s and decoding MNIST's 70,000 PNG images 3 s more
(CIFAR-100 and Tiny ImageNet take longer). `np.load` of the decoded arrays
takes 0.1 s (MNIST's train split, from the page cache). The copy,
`hypermask_jax-SPLIT.npz` in the dataset's version folder, records the
dataset's files it was decoded from (their names, sizes and modification
times). Any change to them, a rebuild or a damaged
record, makes it stale: the split is then read through TFDS again, which also
reports the damage, and the copy is rewritten. (Damage that keeps a file's
size and time shows only where the records are read: running the prepare
command again on the dataset always reads them.) It holds the images
uncompressed (MNIST 55 MB, CIFAR-100 184 MB, Tiny ImageNet 1.35 GB); deleting
it is always safe. A folder that cannot be written keeps no copy, and
`HYPERMASK_DECODED_COPY=off` keeps none anywhere: runs and the prepare
command then neither read nor write one, and every run reads its splits
through TFDS.
"""

import json
import os
import re
import tempfile
import zipfile

import numpy as np

from hypermask_jax import errors

PREFIX = 'hypermask_jax-'
VARIABLE = 'HYPERMASK_DECODED_COPY'


def enabled():
  """Whether copies are read and written: VARIABLE unset, empty or `on`; not with `off`."""
  value = os.environ.get(VARIABLE, '')
  if value not in ('', 'on', 'off'):
    raise errors.BadInput(f"{VARIABLE}={value!r}: must be 'on' or 'off' (or unset)")
  return value != 'off'


def path(dataset_dir, split):
  return os.path.join(dataset_dir, PREFIX + re.sub(r'[^A-Za-z0-9_.-]', '_', split) + '.npz')


def fingerprint(dataset_dir):
  """The dataset's own files (all but the copies) as '[[name, bytes, mtime_ns], ...]'."""
  files = []
  for entry in sorted(os.scandir(dataset_dir), key=lambda e: e.name):
    if entry.is_file() and not entry.name.startswith(PREFIX):
      stat = entry.stat()
      files.append([entry.name, stat.st_size, stat.st_mtime_ns])
  return json.dumps(files)


def load(dataset_dir, split):
  """(images, labels) of the split's copy, or None where there is none or it is stale."""
  try:
    with np.load(path(dataset_dir, split), allow_pickle=False) as copy:
      if str(copy['fingerprint']) != fingerprint(dataset_dir):
        return None
      return copy['images'], copy['labels']
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # none, or unreadable
    return None


def save(dataset_dir, split, images, labels):
  """Writes the split's copy (atomically: a process reading sees the old one or the new one)."""
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=dataset_dir, prefix=PREFIX, suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, images=images, labels=labels, fingerprint=np.array(fingerprint(dataset_dir)))
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the folder's other users
    os.replace(tmp, path(dataset_dir, split))
  except OSError:  # a read-only or full file system: runs read the split through TFDS
    if tmp and os.path.exists(tmp):
      os.remove(tmp)
