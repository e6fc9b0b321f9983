"""Reads TFDS datasets into host arrays, failing with one clear line when they are missing or damaged."""

import os
import re
import socket

import numpy as np
import tensorflow_datasets as tfds

from hypermask_jax import errors
from hypermask_jax import paths
from hypermask_jax.data import decoded_copy

PREPARE = ('python -m hypermask_jax.data.prepare {name} --source_dir DIR_WITH_RAW_FILES '
           '--data_dir {data_dir}')


class DatasetUnavailableError(errors.BadInput):
  """The dataset is neither prepared in data_dir nor downloadable, or its files are damaged."""


# TFDS downloads from here; without a network its retries take minutes to give up.
DOWNLOAD_HOST = 'storage.googleapis.com'


def _unavailable(name, split, data_dir, reason):
  where = data_dir or tfds.core.constants.DATA_DIR
  return DatasetUnavailableError(
      f"TFDS dataset '{name}' (split '{split}') is not prepared in data_dir={where!r} and "
      f'{reason}; prepare it offline with: {PREPARE.format(name=name, data_dir=where)}')


def damaged_error(name, dataset_dir, data_dir, error, source_dir=None):
  """The error for a prepared dataset whose files cannot be read, with the command to rebuild it."""
  reason = re.sub(r'\{\{.*?\}\}\s*', '', str(error)).split(' [Op:')[0].strip()
  reason = reason.splitlines()[0][:200] if reason else ''
  where = data_dir or tfds.core.constants.DATA_DIR
  command = PREPARE.format(name=name, data_dir=where)
  if source_dir:
    command = command.replace('DIR_WITH_RAW_FILES', paths.absolute(source_dir))
  return DatasetUnavailableError(
      f"TFDS dataset '{name}' in {dataset_dir} is damaged ({type(error).__name__}: {reason}); "
      f'rebuild it with: {command} --force')


def _can_resolve(host):
  try:
    socket.getaddrinfo(host, 443)
    return True
  except OSError:
    return False


# TFDS's reader as this module found it: tfds.testing.mock_data replaces it with one that makes up
# examples, which must neither come from nor go into a decoded copy. (The class's own attribute:
# reading it through the class wraps it anew each time.)
_TFDS_AS_DATASET = vars(tfds.core.DatasetBuilder)['as_dataset']


def keeps_decoded_copy(dataset_dir):
  """Whether reads from dataset_dir go through a decoded copy there (decoded_copy.py): copies
  are not turned off, the folder is local and TFDS's own reader is in place, not
  tfds.testing.mock_data's."""
  return (decoded_copy.enabled()
          and vars(tfds.core.DatasetBuilder)['as_dataset'] is _TFDS_AS_DATASET
          and os.path.isdir(dataset_dir))


def read_split(builder, split):
  """(images uint8 [N, H, W, C], labels int32 [N]) of one split of a prepared builder."""
  images, labels = [], []
  # Batched iteration: `batch_size=-1` aborts under tfds.testing.mock_data with TF 2.21.
  for batch in tfds.as_numpy(builder.as_dataset(split=split).batch(8192)):
    images.append(batch['image'])
    labels.append(batch['label'])
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)


def load_split(name, split, data_dir=None, download=True):
  """Returns (images uint8 [N, H, W, C], labels int32 [N]) of one TFDS split."""
  data_dir = data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:  # not prepared, and not in the catalogue
    raise _unavailable(name, split, data_dir, 'is not in the TFDS catalogue (it cannot be '
                       'downloaded)') from None
  except Exception as e:  # an unreadable dataset_info.json of a prepared dataset
    raise damaged_error(name, os.path.join(data_dir or tfds.core.constants.DATA_DIR, name),
                   data_dir, e) from e
  if download and not builder.is_prepared():
    if not _can_resolve(DOWNLOAD_HOST):
      raise _unavailable(name, split, data_dir, f'cannot be downloaded ({DOWNLOAD_HOST} does '
                         'not resolve: no network)')
    try:
      builder.download_and_prepare()
    except Exception as e:  # TFDS raises many types (network, OSError, checksums).
      first_line = str(e).splitlines()[0] if str(e) else ''
      raise _unavailable(name, split, data_dir,
                         f'could not be downloaded ({type(e).__name__}: {first_line})') from e
  keeps_copy = builder.is_prepared() and keeps_decoded_copy(builder.data_dir)
  arrays = decoded_copy.load(builder.data_dir, split) if keeps_copy else None
  if arrays is not None:
    return arrays
  try:
    arrays = read_split(builder, split)
  except Exception as e:  # tf.data raises DataLossError for a truncated or corrupt record.
    if builder.is_prepared():
      raise damaged_error(name, builder.data_dir, data_dir, e) from e
    raise _unavailable(name, split, data_dir, 'download=False') from e
  if keeps_copy:
    decoded_copy.save(builder.data_dir, split, *arrays)
  return arrays
