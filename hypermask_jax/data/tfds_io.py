"""Reads TFDS datasets into host arrays, failing with one clear message when they are missing."""

import numpy as np
import tensorflow_datasets as tfds

IMPORT_HINT = ('python -m hypermask_jax.data.prepare {name} '
               '--source_dir DIR_WITH_RAW_FILES --data_dir {data_dir}')


class DatasetUnavailableError(RuntimeError):
  """The dataset is neither prepared in data_dir nor downloadable."""


def load_split(name, split, data_dir=None, download=True):
  """Returns (images uint8 [N, H, W, C], labels int32 [N]) of one TFDS split."""
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir or None, download=download)
  except Exception as e:  # TFDS raises many types (AssertionError, network, OSError).
    where = data_dir or tfds.core.constants.DATA_DIR
    raise DatasetUnavailableError(
        f"TFDS dataset '{name}' (split '{split}') is not prepared in data_dir={where!r}"
        + (' and could not be downloaded' if download else ' and download=False')
        + f' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}).\n'
        f'Prepare it offline with:\n  {IMPORT_HINT.format(name=name, data_dir=where)}'
    ) from e
  images, labels = [], []
  # Batched iteration: `batch_size=-1` aborts under tfds.testing.mock_data with TF 2.21.
  for batch in tfds.as_numpy(ds.batch(8192)):
    images.append(batch['image'])
    labels.append(batch['label'])
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)
