"""The hypernetwork's output layer equals a plain dense layer: values, gradients, initial params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypermask_jax import hypernet
from hypermask_jax import layers
from hypermask_jax import wide_dense
from tests.conftest import normals


def plain(x, kernel, bias):
  return x @ kernel.T + bias


# Both gradient formulas (3 rows, and more than FUSED_ROWS), with a kernel of whole blocks and
# one with a remainder; the fast loop takes each formula with one of them.
@pytest.mark.parametrize('outputs,rows', [
    (997, 3), (4096, wide_dense.FUSED_ROWS + 2),
    pytest.param(4096, 3, marks=pytest.mark.slow),
    pytest.param(997, wide_dense.FUSED_ROWS + 2, marks=pytest.mark.slow)])
def test_value_and_gradients_equal_the_plain_layer(rows, outputs):
  # probe: a loss that weights every output
  x, kernel, bias, probe = normals(0, (rows, 7), (outputs, 7), (outputs,), (rows, outputs))
  loss = lambda f: lambda *args: jnp.sum(jnp.tanh(f(*args)) * probe)
  every_row = lambda x, kernel, bias: wide_dense.wide_dense(x, kernel, bias, rows)
  np.testing.assert_allclose(every_row(x, kernel, bias), plain(x, kernel, bias),
                             rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss(every_row), argnums=(0, 1, 2)))(x, kernel, bias)
  want = jax.grad(loss(plain), argnums=(0, 1, 2))(x, kernel, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def materialise_every_kernel(monkeypatch, materialised):
  """With materialised, the distances' products of 2 to 4 rows take their [m, r] form here too."""
  if materialised:
    monkeypatch.setattr(wide_dense, 'MATERIALISED_MIN_SIZE', 0)


@pytest.mark.parametrize('materialised', [False, True])
def test_rows_past_live_rows_count_as_zero_inputs(monkeypatch, materialised):
  """Every live_rows value, traced in one compiled function, against the plain layer on x with
  its dead rows zeroed: outputs, and gradients (the dead rows' input gradient is 0)."""
  materialise_every_kernel(monkeypatch, materialised)
  rows, outputs = 10, 4096
  x, kernel, bias, probe = normals(1, (rows, 7), (outputs, 7), (outputs,), (rows, outputs))
  loss = lambda f: lambda *args: jnp.sum(jnp.tanh(f(*args)) * probe)
  masked = lambda x, kernel, bias, live: plain(jnp.where(jnp.arange(rows)[:, None] < live, x, 0),
                                               kernel, bias)
  traces = []

  @jax.jit
  def value_and_grads(x, kernel, bias, live):
    traces.append(live)
    return (wide_dense.wide_dense(x, kernel, bias, live),
            jax.grad(loss(wide_dense.wide_dense), argnums=(0, 1, 2))(x, kernel, bias, live))

  want_grads = jax.jit(jax.grad(loss(masked), argnums=(0, 1, 2)))
  assert wide_dense.live_row_buckets(rows) == (1, 2, 4, 8, 10)
  for live in range(1, rows + 1):
    # As numpy: a slice of a new length per `live` would compile an op of its own.
    out, got = jax.device_get(value_and_grads(x, kernel, bias, jnp.int32(live)))
    np.testing.assert_allclose(out, masked(x, kernel, bias, live), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[live:], np.broadcast_to(bias, (rows - live, outputs)))
    want = want_grads(x, kernel, bias, live)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert np.all(got[0][live:] == 0)
  assert len(traces) == 1


# Both gradient formulas (10 rows, and more than FUSED_ROWS) with and without the [m, r] form;
# the fast loop takes each formula and each form once.
@pytest.mark.parametrize('rows,materialised', [
    (10, False), (wide_dense.FUSED_ROWS + 2, True),
    pytest.param(10, True, marks=pytest.mark.slow),
    pytest.param(wide_dense.FUSED_ROWS + 2, False, marks=pytest.mark.slow)])
def test_distances_equal_the_plain_layers_outputs_minus_targets(monkeypatch, rows, materialised):
  """wide_dense_distances, every live_rows value traced in one compiled function, against the
  plain layer on x with its dead rows zeroed: row 0's output, the live rows' squared distances
  to their targets (0 past live_rows), and the gradients of a loss on both."""
  materialise_every_kernel(monkeypatch, materialised)
  outputs = 4096
  x, kernel, bias, table, probe = normals(2, (rows, 7), (outputs, 7), (outputs,),
                                          (rows + 3, outputs), (outputs,))
  target_rows = jnp.asarray(np.random.default_rng(2).permutation(rows + 3)[:rows - 1])
  weights = jnp.arange(1.0, rows)  # a loss that weights every distance differently

  def loss(out, distances):
    return jnp.sum(jnp.tanh(out) * probe) + jnp.sum(weights * distances) / outputs

  def plain_distances(x, kernel, bias, live):
    y = plain(jnp.where(jnp.arange(rows)[:, None] < live, x, 0), kernel, bias)
    sq = jnp.sum((y[1:] - table[target_rows]) ** 2, 1)
    return y[0], jnp.where(jnp.arange(1, rows) < live, sq, 0.0)

  traces = []

  @jax.jit
  def value_and_grads(x, kernel, bias, live):
    traces.append(live)
    fn = lambda *a: wide_dense.wide_dense_distances(*a, live, table, target_rows)
    return fn(x, kernel, bias), jax.grad(lambda *a: loss(*fn(*a)), argnums=(0, 1, 2))(
        x, kernel, bias)

  want_grads = jax.jit(jax.grad(lambda *a: loss(*plain_distances(*a)), argnums=(0, 1, 2)))
  for live in range(1, rows + 1):
    # As numpy: a slice of a new length per `live` would compile an op of its own.
    (out, distances), got = jax.device_get(value_and_grads(x, kernel, bias, jnp.int32(live)))
    want_out, want_distances = plain_distances(x, kernel, bias, live)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-5)
    assert np.all(distances[live - 1:] == 0)
    for g, w in zip(got, want_grads(x, kernel, bias, live)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert np.all(got[0][live:] == 0)
  assert len(traces) == 1


@pytest.mark.parametrize('rows', [1, 2, 3, 4, 8, 10])
def test_only_large_kernels_take_the_product_as_m_by_r(monkeypatch, rows):
  """The [m, r] form (two barriers) for 2 to 4 rows of a kernel of 2^26 entries or more, where
  XLA computes the product."""
  monkeypatch.setenv('HYPERMASK_WIDE_PRODUCT', 'xla')
  def form(kernel_entries):
    x = jax.ShapeDtypeStruct((rows, 100), jnp.float32)
    kernel = jax.ShapeDtypeStruct((-(-kernel_entries // 100), 100), jnp.float32)  # at least
    jaxpr = str(jax.make_jaxpr(wide_dense._distance_rows_times_kernel)(x, kernel))  # pylint: disable=protected-access
    return jaxpr.count('optimization_barrier')

  large = wide_dense.MATERIALISED_MIN_SIZE
  assert large == 2 ** 26
  assert form(large) == (2 if 2 <= rows <= 4 else 0)
  assert form(large - 100) == 0


def test_initial_kernel_is_the_plain_layers_transposed():
  """The published configs start from the numbers a plain nn.Dense output layer would hold."""

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.torch_dense(11, x.shape[-1], name='out')(x)

  class Wide(nn.Module):
    @nn.compact
    def __call__(self, x):
      return wide_dense.WideDense(11, name='out')(x)

  x = jnp.ones((2, 5))
  plain_params = Plain().init(jax.random.key(3), x)['params']['out']
  wide_params = Wide().init(jax.random.key(3), x)['params']['out']
  np.testing.assert_array_equal(wide_params['kernel'], plain_params['kernel'].T)
  np.testing.assert_array_equal(wide_params['bias'], plain_params['bias'])


def test_hmlp_output_layer_is_wide():
  model = hypernet.HMLP(num_outputs=13, max_tasks=2, embedding_size=3, hidden=(4,))
  params = model.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))['params']
  assert params['out']['kernel'].shape == (13, 4)
  hidden = jax.nn.elu(params['embeddings'] @ params['dense_0']['kernel']
                      + params['dense_0']['bias'])
  np.testing.assert_allclose(model.apply({'params': params}, jnp.array([0, 1])),
                             plain(hidden, params['out']['kernel'], params['out']['bias']),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('m, fold, form', [(4096, 8, 'fold'), (1001, 7, 'fold'), (993, 3, 'fold'),
                                           (997, None, 'fold'), (4096, None, 'two_rows')])
def test_one_rows_input_gradient_is_its_vector_matrix_product(monkeypatch, m, fold, form):
  """One row times the kernel, folded into a matmul of `fold` rows (the largest of ROW_FOLDS
  dividing m; none for a prime m, or with the accelerators' form: two rows), equals the
  float64 product."""
  monkeypatch.setenv('HYPERMASK_ROW_INPUT_GRAD', form)
  c, kernel = normals(5, (m,), (m, 13))
  product = lambda c, kernel: wide_dense._row_times_kernel(c, kernel)  # pylint: disable=protected-access
  got = jax.jit(product)(c, kernel)  # a new function: traced with this test's form
  want = np.asarray(c, np.float64) @ np.asarray(kernel, np.float64)
  # float32 sums of up to 4096 products: XLA:CPU's two-row product on an AVX2-only CPU (AMD
  # Zen 3) came within 1.4e-6 of the largest entry, the folds within 1e-6.
  np.testing.assert_allclose(got, want, rtol=0, atol=4e-6 * np.abs(want).max())
  jaxpr = str(jax.make_jaxpr(product)(c, kernel))
  if fold:
    assert f'f32[{m // fold},{fold}]' in jaxpr and 'pad' not in jaxpr
  else:
    assert 'pad' in jaxpr


@pytest.mark.parametrize('with_targets', [False, True])
def test_a_probe_gets_the_output_rows_cotangent_whose_product_with_x_is_the_kernel_gradient(
    with_targets):
  """With a probe (factored_adam.py's input), neither the kernel nor x gets a gradient, the
  probe gets ct [k, m] as factors, and ct^T @ (x's live rows) and (ct's live rows) @ kernel are the
  kernel's and x's gradients the layer gives without a probe; the bias's is unchanged."""
  rows, outputs, live = 4, 997, 3
  x, weights, table = normals(3, (rows, 7), (rows, outputs), (rows + 2, outputs))
  target_rows = jnp.array([4, 0, 2])
  layer = wide_dense.WideDense(outputs)
  key = jax.random.key(3)
  params = nn.Module.init(layer, key, x)['params']  # its field `init` hides the method

  def loss(params, x, probes):
    variables = {'params': params, **({'probes': {'rows': probes}} if probes is not None else {})}
    if with_targets:
      out, distances = layer.apply(variables, x, live, (table, target_rows))
      return jnp.sum(jnp.tanh(out) * weights[0]) + jnp.sum(distances * jnp.arange(1.0, rows))
    return jnp.sum(jnp.tanh(layer.apply(variables, x, live)) * weights)

  want_params, want_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x, None)
  got_params, got_x, (ct0, ct_rows, ct_scale) = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
      params, x, wide_dense.probe(rows, outputs))
  ct = jnp.concatenate([ct0[None], ct_scale[:, None] * ct_rows])
  assert np.all(got_params['kernel'] == 0) and np.all(got_x == 0)
  is_live = jnp.arange(rows)[:, None] < live
  np.testing.assert_allclose(ct.T @ jnp.where(is_live, x, 0.0), want_params['kernel'],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(jnp.where(is_live, ct @ params['kernel'], 0.0), want_x, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(got_params['bias'], want_params['bias'])
