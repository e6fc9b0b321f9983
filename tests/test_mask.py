"""Masks against hand-computed values (SPEC 1.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypermask_jax import layout as layout_lib
from hypermask_jax import mask as mask_lib
from hypermask_jax import targets
from tests.conftest import normals


def raw_for(a):
  """Hypernet outputs whose |tanh| is `a`, alternating signs (the mask must ignore the sign)."""
  a = np.asarray(a, np.float32)
  signs = np.where(np.arange(a.size).reshape(a.shape) % 2 == 0, 1.0, -1.0)
  return jnp.asarray(signs * np.arctanh(a))


def test_zero_sparsity_is_abs_tanh():
  h = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.0])
  np.testing.assert_allclose(mask_lib.semi_binary(h, 0.0, sparse=False),
                             np.abs(np.tanh([-2.0, -0.5, 0.0, 0.3, 1.0])), rtol=1e-6)
  # s = 0 through the percentile path: the 0th percentile is the minimum, so nothing is dropped.
  np.testing.assert_allclose(mask_lib.semi_binary(h, 0.0, sparse=True),
                             np.abs(np.tanh([-2.0, -0.5, 0.0, 0.3, 1.0])), rtol=1e-6)


def test_sparsity_30_keeps_ties():
  a = [0.1, 0.2, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
  # 30th percentile, linear: position 0.3 * 9 = 2.7 between sorted[2] = 0.2 and sorted[3] = 0.2.
  got = mask_lib.semi_binary(raw_for(a), 30.0, sparse=True)
  np.testing.assert_allclose(got, [0.0] + a[1:], rtol=1e-5)


def test_sparsity_interpolates_per_tensor():
  a = np.array([[0.1, 0.4], [0.3, 0.2]])
  # sorted 0.1 0.2 0.3 0.4; s=50 -> position 1.5 -> tau = 0.25: keep 0.3 and 0.4.
  np.testing.assert_allclose(mask_lib.semi_binary(raw_for(a), 50.0, True),
                             [[0.0, 0.4], [0.3, 0.0]], rtol=1e-5)
  # s=30 -> position 0.9 -> tau = 0.19: only 0.1 goes.
  np.testing.assert_allclose(mask_lib.semi_binary(raw_for(a), 30.0, True),
                             [[0.0, 0.4], [0.3, 0.2]], rtol=1e-5)


def test_sparsity_ramps_during_task_zero_only():
  ramp = [float(mask_lib.sparsity_at(30.0, 0, i, 10)) for i in range(10)]
  np.testing.assert_allclose(ramp, [3.0 * (i + 1) for i in range(10)], rtol=1e-6)
  assert float(mask_lib.sparsity_at(30.0, 1, 0, 10)) == 30.0
  assert float(mask_lib.sparsity_at(30.0, 4, 9, 10)) == 30.0


def small_target(hidden):
  model = targets.MLP(hidden=hidden, num_classes=3)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 4)))['params']


def test_masks_cover_every_weight_and_the_forward_pass_leaves_the_head_bias_unmasked():
  # 11 hidden layers: 'dense_10' sorts before 'dense_2', which selection must not care about.
  _, params = small_target((2,) * 11)
  layout = layout_lib.Layout.of(params, layout_lib.is_weight)  # HyperMask's
  assert layout.size == sum(x.size for x in jax.tree.leaves(params))
  assert layout.paths[-2:] == (('head', 'weight'), ('head', 'bias'))
  flat = jnp.arange(layout.size, dtype=jnp.float32) / layout.size
  pieces = layout.split(flat)
  masks = mask_lib.masks_from_tensors(params, pieces, 0.0, sparse=False)
  for path, piece in pieces.items():
    got = masks
    for key in path:
      got = got[key]
    np.testing.assert_allclose(got, np.abs(np.tanh(piece)), rtol=1e-6)
  # The head's bias is the last tensor of the flat output.
  np.testing.assert_allclose(masks['head']['bias'], np.abs(np.tanh(flat[-3:])), rtol=1e-6)
  masked = mask_lib.apply_masks(params, masks, layout_lib.is_masked)
  np.testing.assert_array_equal(masked['head']['bias'], params['head']['bias'])
  np.testing.assert_allclose(masked['head']['weight'],
                             params['head']['weight'] * masks['head']['weight'])


@pytest.mark.slow
def test_sparsity_cuts_every_mask_but_the_output_biass():
  """The output bias's mask only weights its L1 drift; the reference does not sparsify it."""
  _, params = small_target((6,))
  layout = layout_lib.Layout.of(params, layout_lib.is_weight)
  flat, = normals(3, (layout.size,))
  pieces = layout.split(flat)
  masks = mask_lib.masks_from_tensors(params, pieces, 50.0, sparse=True)
  np.testing.assert_allclose(masks['head']['bias'], np.abs(np.tanh(pieces[('head', 'bias')])),
                             rtol=1e-6)
  for path in (('dense_0', 'weight'), ('head', 'weight'), ('dense_0', 'bias')):
    got = masks[path[0]][path[1]]
    assert 0.3 < np.mean(got == 0) <= 0.5, path  # the lower half is cut


@pytest.mark.parametrize('path,masked', [
    (('dense_0', 'weight'), True), (('dense_0', 'bias'), True), (('head', 'weight'), True),
    (('conv0_0', 'kernel'), True), (('head', 'bias'), False), (('BatchNorm_0', 'scale'), False),
    (('BatchNorm_0', 'bias'), False),
])
def test_is_masked(path, masked):
  assert layout_lib.is_masked(path) == masked


@pytest.mark.parametrize('n', [1, 2, 10, 1000, 313600])  # 313600: the largest Split MNIST mask
@pytest.mark.parametrize('q', [0.0, 3.3, 30.0, 50.0, 99.9])
def test_percentile_matches_numpy(n, q):
  rng = np.random.RandomState(n)
  a = np.abs(np.tanh(rng.randn(n))).astype(np.float32)
  a[: n // 3] = a[0]  # many ties
  np.testing.assert_allclose(mask_lib.percentile(jnp.asarray(a), q), np.percentile(a, q),
                             rtol=1e-6)


@pytest.mark.parametrize('values', [[0.5], [0.0, 0.0, 0.0], [1.0, 0.0], [3e-39, 1e-45, 0.0, 2.0]])
def test_kth_smallest_edge_values(values):
  """One element, all equal, zeros, denormals: every rank against numpy's sort."""
  a = np.array(values, np.float32)
  for k in range(a.size):
    assert float(mask_lib.kth_smallest(jnp.asarray(a), jnp.int32(k))) == np.sort(a)[k]
