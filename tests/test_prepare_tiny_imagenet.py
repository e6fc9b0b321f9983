"""The offline Tiny ImageNet importer on a small zip in the layout of tiny-imagenet-200.zip."""

import io
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from hypermask_jax.data import prepare
from hypermask_jax.data import tfds_io

WNIDS = ['n01443537', 'n01629819', 'n01641577']
ROOT = prepare.TINY_IMAGENET_ROOT


def jpeg(image):
  return tf.io.encode_jpeg(image, quality=90).numpy()


def decoded(data):
  """What a JPEG decodes to as RGB (a grey one's channel repeated): what the importer stores."""
  return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def write_zip(path, per_class=3, val_per_class=2, size=64, bad_annotation=False, skip=None):
  """A tiny-imagenet-200.zip of 3 classes; the second class's first image is grey. Returns
  {split: [(file name, jpeg bytes, label)]} as written."""
  rs = np.random.RandomState(0)
  written = {'train': [], 'validation': []}
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr(f'{ROOT}/wnids.txt', '\n'.join(WNIDS) + '\n')
    archive.writestr(f'{ROOT}/words.txt', ''.join(f'{w}\tclass {w}\n' for w in WNIDS))
    for label, wnid in enumerate(WNIDS):
      archive.writestr(f'{ROOT}/train/{wnid}/{wnid}_boxes.txt', '')
      for i in range(per_class):
        channels = 1 if (label, i) == (1, 0) else 3
        data = jpeg(rs.randint(0, 256, (size, size, channels)).astype(np.uint8))
        name = f'{wnid}_{i}.JPEG'
        archive.writestr(f'{ROOT}/train/{wnid}/images/{name}', data)
        written['train'].append((name, data, label))
    lines = []
    for i in range(val_per_class * len(WNIDS)):
      label = i % len(WNIDS)
      data = jpeg(rs.randint(0, 256, (64, 64, 3)).astype(np.uint8))
      name = f'val_{i}.JPEG'
      if name != skip:
        archive.writestr(f'{ROOT}/val/images/{name}', data)
      wnid = 'n99999999' if bad_annotation and i == 3 else WNIDS[label]
      lines.append(f'{name}\t{wnid}\t0\t0\t63\t63')
      written['validation'].append((name, data, label))
    archive.writestr(f'{ROOT}/val/val_annotations.txt', '\n'.join(lines) + '\n')
    archive.writestr(f'{ROOT}/test/images/test_0.JPEG', jpeg(np.zeros((64, 64, 3), np.uint8)))
  return written


def test_tiny_imagenet_round_trip(tmp_path):
  written = write_zip(tmp_path / prepare.TINY_IMAGENET_ZIP)
  data_dir = str(tmp_path / 'tfds')
  done = prepare.prepare('tiny_imagenet', str(tmp_path), data_dir)
  assert done['written'] and done['counts'] == {'train': 9, 'validation': 6}
  assert not prepare.prepare('tiny_imagenet', str(tmp_path), data_dir)['written']  # verified
  for split, examples in written.items():
    images, labels = tfds_io.load_split('tiny_imagenet', split, data_dir, download=False)
    assert images.shape == (len(examples), 64, 64, 3) and images.dtype == np.uint8
    by_content = {(int(y), x.tobytes()) for x, y in zip(images, labels)}
    assert by_content == {(y, decoded(data).tobytes()) for _, data, y in examples}
  grey = decoded(written['train'][3][1])
  assert (grey[..., 0] == grey[..., 2]).all()  # the grey image is stored as RGB


def test_force_rebuilds_and_a_bad_zip_leaves_the_dataset(tmp_path):
  write_zip(tmp_path / prepare.TINY_IMAGENET_ZIP)
  data_dir = str(tmp_path / 'tfds')
  prepare.prepare('tiny_imagenet', str(tmp_path), data_dir)
  write_zip(tmp_path / prepare.TINY_IMAGENET_ZIP, per_class=4)
  assert prepare.prepare('tiny_imagenet', str(tmp_path), data_dir, force=True)['counts'] == {
      'train': 12, 'validation': 6}
  path = tmp_path / prepare.TINY_IMAGENET_ZIP
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(prepare.SourceError, match='not a complete zip archive'):
    prepare.prepare('tiny_imagenet', str(tmp_path), data_dir, force=True)
  assert prepare.verify('tiny_imagenet', data_dir) == {'train': 12, 'validation': 6}


@pytest.mark.parametrize('kwargs, match', [
    ({'size': 32}, r'n01443537_0.JPEG is 32x32, expected 64x64'),
    ({'bad_annotation': True}, r'val_annotations.txt line 4: expected'),
    ({'skip': 'val_2.JPEG'}, r'has no tiny-imagenet-200/val/images/val_2.JPEG'),
])
def test_a_bad_archive_is_named(tmp_path, kwargs, match):
  write_zip(tmp_path / prepare.TINY_IMAGENET_ZIP, **kwargs)
  with pytest.raises(prepare.SourceError, match=match) as e:
    prepare.read_tiny_imagenet(str(tmp_path))
  assert str(e.value).startswith(str(tmp_path / prepare.TINY_IMAGENET_ZIP))


def test_a_missing_zip_and_a_missing_dataset_say_what_to_do(tmp_path):
  with pytest.raises(prepare.SourceError, match='not found; put tiny-imagenet-200.zip'):
    prepare.prepare('tiny_imagenet', str(tmp_path), str(tmp_path / 'tfds'))
  with pytest.raises(tfds_io.DatasetUnavailableError,
                     match='not in the TFDS catalogue.*prepare tiny_imagenet'):
    tfds_io.load_split('tiny_imagenet', 'train', str(tmp_path / 'tfds'), download=True)
