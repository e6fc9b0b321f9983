"""Hypernetworks: the chunked one equals an explicit per-chunk loop and fills odd remainders right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypermask_jax import hypernet
from hypermask_jax import layout as layout_lib
from hypermask_jax import targets


def test_chunked_output_equals_a_per_chunk_loop():
  model = hypernet.ChunkedHMLP(num_outputs=23, max_tasks=3, embedding_size=4, hidden=(6, 5),
                               chunk_size=5, chunk_embedding_size=2)
  params = model.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))['params']
  assert params['chunk_embeddings'].shape == (5, 2)  # ceil(23 / 5) chunks
  out = model.apply({'params': params}, jnp.array([2, 0]))
  assert out.shape == (2, 23)

  def one_chunk(task, c):  # the MLP by hand, one chunk at a time
    x = jnp.concatenate([params['chunk_embeddings'][c], params['embeddings'][task]])
    for name in ('dense_0', 'dense_1'):
      x = jax.nn.elu(x @ params[name]['kernel'] + params[name]['bias'])
    return x @ params['out']['kernel'] + params['out']['bias']

  for row, task in enumerate((2, 0)):
    loop = jnp.concatenate([one_chunk(task, c) for c in range(5)])[:23]
    np.testing.assert_allclose(out[row], loop, rtol=1e-5, atol=1e-6)


def test_chunks_split_into_target_shapes_with_an_odd_remainder():
  target = targets.MLP(hidden=(7,), num_classes=3)
  shapes = jax.eval_shape(target.init, jax.random.key(0), jnp.zeros((1, 5)))['params']
  layout = layout_lib.Layout.of(shapes, layout_lib.is_weight)
  assert layout.size == 5 * 7 + 7 + 7 * 3 + 3  # 66: every tensor, the head bias included
  model = hypernet.ChunkedHMLP(num_outputs=layout.size, max_tasks=2, embedding_size=3,
                               hidden=(4,), chunk_size=10, chunk_embedding_size=2)  # 7 chunks
  params = model.init(jax.random.key(1), jnp.zeros((1,), jnp.int32))['params']
  flat = model.apply({'params': params}, jnp.array([1]))[0]
  weights = layout.unflatten(flat)
  assert jax.tree.map(jnp.shape, weights) == jax.tree.map(jnp.shape, shapes)
  offset = 0
  for path, shape in zip(layout.paths, layout.shapes):
    size = int(np.prod(shape))
    got = weights
    for key in path:
      got = got[key]
    np.testing.assert_array_equal(got.ravel(), flat[offset:offset + size])
    offset += size
  assert offset == flat.shape[0]
  target.apply({'params': weights}, jnp.ones((2, 5)))  # the target consumes it as is


@pytest.mark.parametrize('chunk_size,expected', [(0, hypernet.HMLP), (10, hypernet.ChunkedHMLP)])
def test_build_picks_the_hypernetwork(chunk_size, expected):
  class Config:
    max_tasks, embedding_size, hnet_hidden, hnet_activation = 2, 3, (4,), 'relu'
    chunk_embedding_size = 2
  Config.chunk_size = chunk_size
  assert isinstance(hypernet.build(Config, 25), expected)
