"""Reads TFDS datasets into host arrays, failing with one clear message when they are missing."""

import socket

import numpy as np
import tensorflow_datasets as tfds

IMPORT_HINT = ('python -m hypermask_jax.data.prepare {name} '
               '--source_dir DIR_WITH_RAW_FILES --data_dir {data_dir}')


class DatasetUnavailableError(RuntimeError):
  """The dataset is neither prepared in data_dir nor downloadable."""


# TFDS downloads from here; without a network its retries take minutes to give up.
DOWNLOAD_HOST = 'storage.googleapis.com'


def _unavailable(name, split, data_dir, reason):
  where = data_dir or tfds.core.constants.DATA_DIR
  return DatasetUnavailableError(
      f"TFDS dataset '{name}' (split '{split}') is not prepared in data_dir={where!r} "
      f'and {reason}.\nPrepare it offline with:\n  '
      + IMPORT_HINT.format(name=name, data_dir=where))


def _can_resolve(host):
  try:
    socket.getaddrinfo(host, 443)
    return True
  except OSError:
    return False


def load_split(name, split, data_dir=None, download=True):
  """Returns (images uint8 [N, H, W, C], labels int32 [N]) of one TFDS split."""
  data_dir = data_dir or None
  if (download and not tfds.builder(name, data_dir=data_dir).is_prepared()
      and not _can_resolve(DOWNLOAD_HOST)):
    raise _unavailable(name, split, data_dir, f'cannot be downloaded ({DOWNLOAD_HOST} does '
                       'not resolve: no network)')
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
  except Exception as e:  # TFDS raises many types (AssertionError, network, OSError).
    first_line = str(e).splitlines()[0] if str(e) else ''
    reason = 'could not be downloaded' if download else 'download=False'
    raise _unavailable(name, split, data_dir, f'{reason} ({type(e).__name__}: {first_line})') from e
  images, labels = [], []
  # Batched iteration: `batch_size=-1` aborts under tfds.testing.mock_data with TF 2.21.
  for batch in tfds.as_numpy(ds.batch(8192)):
    images.append(batch['image'])
    labels.append(batch['label'])
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)
