"""Hypernetworks: the chunked one equals an explicit per-chunk loop and fills odd remainders right."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypermask_jax import config_checks
from hypermask_jax import hypernet
from hypermask_jax import layout as layout_lib
from hypermask_jax import targets
from tests.conftest import needs_cpu_kernels
from tests.conftest import normals


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


# A cut last chunk, and a whole one; from Gram matrices, and from the outputs (the last two in
# the full suite only).
@pytest.mark.parametrize('num_outputs', [230, pytest.param(240, marks=pytest.mark.slow)])
@pytest.mark.parametrize('rows,gram', [([3, 0, 2], True),
                                       pytest.param([1], False, marks=pytest.mark.slow)])
def test_chunked_distances_equal_the_direct_sums_in_value_and_gradient(num_outputs, rows, gram):
  """hypernet.chunked_distances against sum((h(e_j) - h0(e_j))**2) over the used outputs: from
  Gram matrices (3 rows of 6 chunks of 40 outputs from 2 hidden units), or from the outputs."""
  model = hypernet.ChunkedHMLP(num_outputs=num_outputs, max_tasks=4, embedding_size=4,
                               hidden=(6, 2), chunk_size=40, chunk_embedding_size=2)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1,), jnp.int32))['params'])
  snapshot = init(jax.random.key(0))
  params = jax.jit(lambda a, b: jax.tree.map(lambda a, b: a + 0.01 * b, a, b))(
      snapshot, init(jax.random.key(1)))
  rows = jnp.array(rows)
  hidden = lambda p: model.apply({'params': p}, rows, hidden_only=True)

  def direct(p):
    outputs = lambda p: model.apply({'params': p}, rows)
    return jnp.sum(jnp.square(outputs(p) - outputs(snapshot)), 1)

  def distances(p):
    return hypernet.chunked_distances(hidden(p), p['out'], hidden(snapshot), snapshot['out'],
                                      model.last_chunk_size)

  assert hidden(params).shape == (len(rows), 6, 2)
  shapes = {v.aval.shape for e in jax.make_jaxpr(distances)(params).jaxpr.eqns for v in e.outvars}
  assert ((len(rows), 6, 40) not in shapes) == gram  # the Gram form never builds the outputs
  want, got = jax.jit(direct)(params), jax.jit(distances)(params)
  assert float(want.min()) > 0
  np.testing.assert_allclose(got, want, rtol=2e-5)
  weights = jnp.arange(1.0, len(rows) + 1.0)
  want_grad = jax.jit(jax.grad(lambda p: jnp.sum(direct(p) * weights)))(params)
  got_grad = jax.jit(jax.grad(lambda p: jnp.sum(distances(p) * weights)))(params)
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6 * float(np.abs(w).max()))
  np.testing.assert_array_equal(distances(snapshot), 0.0)


def test_chunks_split_into_target_shapes_with_an_odd_remainder():
  target = targets.MLP(hidden=(7,), num_classes=3)
  shapes = jax.eval_shape(target.init, jax.random.key(0), jnp.zeros((1, 5)))['params']
  layout = layout_lib.Layout.of(shapes, layout_lib.is_weight)
  assert layout.size == 5 * 7 + 7 + 7 * 3 + 3  # 66: every tensor, the head bias included
  model = hypernet.ChunkedHMLP(num_outputs=layout.size, max_tasks=2, embedding_size=3,
                               hidden=(4,), chunk_size=10, chunk_embedding_size=2)  # 7 chunks
  params = model.init(jax.random.key(1), jnp.zeros((1,), jnp.int32))['params']
  flat = model.apply({'params': params}, jnp.array([1]))[0]
  weights = layout.unflatten(layout.split(flat))
  assert jax.tree.map(jnp.shape, weights) == jax.tree.map(jnp.shape, shapes)
  # PyTorch's layout and layer order: dense_0 [7, 5] then its bias, head [3, 7] then its bias.
  assert layout.paths == (('dense_0', 'weight'), ('dense_0', 'bias'), ('head', 'weight'),
                          ('head', 'bias'))
  offset = 0
  for path, torch_shape in zip(layout.paths, ((7, 5), (7,), (3, 7), (3,))):
    size = int(np.prod(torch_shape))
    got = weights
    for key in path:
      got = got[key]
    np.testing.assert_array_equal(got, flat[offset:offset + size].reshape(torch_shape))
    offset += size
  assert offset == flat.shape[0]
  target.apply({'params': weights}, jnp.ones((2, 5)))  # the target consumes it as is


def test_layout_follows_the_order_the_networks_run_their_layers():
  mlp = targets.MLP(hidden=(3,) * 11, num_classes=2)
  shapes = jax.eval_shape(mlp.init, jax.random.key(0), jnp.zeros((1, 4)))['params']
  names = [p[0] for p in layout_lib.Layout.of(shapes, layout_lib.is_weight).paths[::2]]
  assert names == [f'dense_{i}' for i in range(11)] + ['head']  # dense_10 after dense_9
  resnet = targets.ResNet20(num_classes=10, width=1)
  shapes = jax.eval_shape(resnet.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  paths = layout_lib.Layout.of(shapes, layout_lib.is_weight).paths
  convs = [p[:-1] for p in paths[::2]]
  assert convs == [('conv_stem',)] + [(f'stage{s}_block{b}', f'conv{c}') for s in range(3)
                                      for b in range(3) for c in range(2)] + [('head',)]
  assert all(p[-1] == 'kernel' for p in paths[:-2:2]) and paths[-2] == ('head', 'weight')
  assert all(p[-1] == 'bias' for p in paths[1::2])
  zenke = targets.ZenkeNet(num_classes=10)
  shapes = jax.eval_shape(zenke.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  layout = layout_lib.Layout.of(shapes, layout_lib.is_weight)
  assert [p[0] for p in layout.paths[::2]] == ['conv0_0', 'conv0_1', 'conv1_0', 'conv1_1',
                                              'dense', 'head']
  assert layout.torch_shapes[:2] == ((32, 3, 3, 3), (32,))  # conv kernels as [out, in, kh, kw]
  assert layout.torch_shapes[8] == (512, 2304)


def test_xavier_init_bounds_and_zero_biases():
  model = hypernet.HMLP(num_outputs=78000, max_tasks=2, embedding_size=24, hidden=(25,),
                        weight_init='xavier')
  params = model.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))['params']
  bound = np.sqrt(6 / (25 + 78000))  # about 0.0088
  out = np.asarray(params['out']['kernel'])
  assert np.abs(out).max() <= bound and np.abs(out).max() > 0.99 * bound
  assert np.abs(params['dense_0']['kernel']).max() <= np.sqrt(6 / (24 + 25))
  assert not np.any(params['out']['bias']) and not np.any(params['dense_0']['bias'])
  torch_default = hypernet.HMLP(num_outputs=78000, max_tasks=2, embedding_size=24, hidden=(25,))
  out = torch_default.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))['params']['out']
  assert 0.19 < np.abs(out['kernel']).max() <= 0.2 and np.abs(out['bias']).max() > 0.19  # 1/5


@pytest.mark.parametrize('chunk_size,expected', [(0, hypernet.HMLP), (10, hypernet.ChunkedHMLP)])
def test_build_picks_the_hypernetwork(chunk_size, expected):
  class Config:
    max_tasks, embedding_size, hnet_hidden, hnet_activation = 2, 3, (4,), 'relu'
    chunk_embedding_size, hnet_init = 2, 'torch'
  Config.chunk_size = chunk_size
  assert isinstance(hypernet.build(Config, 25), expected)


@pytest.mark.parametrize('form', [
    'direct', 'transposed_copy', pytest.param('ffi', marks=needs_cpu_kernels)])
@pytest.mark.parametrize('init', config_checks.CHOICES['hnet_init'])
def test_the_chunk_output_layer_is_a_dense_layer_with_a_hand_written_gradient(
    init, form, monkeypatch):
  """Same params (names, shapes, initial values) and outputs as nn.Dense; its gradients are
  those computed by hand: kernel x^T ct, bias the sum of ct over every row, input ct kernel^T
  (in each of the backward pass's forms)."""
  monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', form)
  x, ct = normals(1, (2, 12, 10), (2, 12, 300))
  dense = hypernet._dense(300, 10, init, None)
  ours = hypernet.ChunkDense(300, init)
  params = dense.init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(jnp.array_equal, params, ours.init(jax.random.key(0), x)))
  np.testing.assert_allclose(ours.apply(params, x), dense.apply(params, x), rtol=1e-6, atol=1e-6)
  grad, d_x = jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) * ct), (0, 1))(params, x)
  grad = grad['params']
  np.testing.assert_allclose(d_x, jnp.einsum('abo,io->abi', ct, params['params']['kernel']),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad['bias'], ct.sum((0, 1)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad['kernel'], jnp.einsum('abi,abo->io', x, ct), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('form', ['direct', pytest.param('ffi', marks=needs_cpu_kernels)])
def test_the_chunk_layers_kernel_and_bias_gradients_are_matmuls_written_as_the_params(
    form, monkeypatch):
  """Compiled, the kernel gradient comes out of its own matmul as [fan_in, m] and the bias
  gradient out of another (or both out of the CPU kernel): no slice of a [fan_in + 1, m]
  product (a copy of the layer's gradient, as one matmul of [x, 1] made) and no reduction over
  the rows (YNNPACK's, slow)."""
  monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', form)
  x, ct = normals(1, (12, 10), (12, 4200))
  layer = hypernet.ChunkDense(4200)
  params = layer.init(jax.random.key(0), x)
  grad = jax.jit(jax.grad(lambda p, x, ct: jnp.sum(layer.apply(p, x) * ct)))
  hlo = grad.lower(params, x, ct).compile().as_text()  # arguments: nothing folds as a constant
  assert not re.findall(r'f32\[10,4200\][^ ]* (?:slice|copy)\(', hlo)
  assert not re.findall(r'f32\[4200\][^ ]* reduce\(', hlo)
  assert len(re.findall(r'f32\[(?:1,)?4200\][^ ]* dot\(', hlo)) == (form == 'direct')
  np.testing.assert_allclose(grad(params, x, ct)['params']['bias'], ct.sum(0), rtol=1e-5,
                             atol=1e-5)
