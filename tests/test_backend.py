"""Backend-dependent choices: defaults per backend, forced by environment variables."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hypermask_jax import backend
from hypermask_jax import wide_dense


def test_conv_defaults_to_nhwc_vjp_on_cpu_and_xla_elsewhere(monkeypatch):
  monkeypatch.delenv('HYPERMASK_CONV', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert backend.conv() == 'nhwc_vjp'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.conv() == 'xla'


@pytest.mark.parametrize('value', ['nhwc_vjp', 'im2col', 'xla'])
def test_conv_is_forced_by_the_environment(monkeypatch, value):
  monkeypatch.setenv('HYPERMASK_CONV', value)
  assert backend.conv() == value


def test_a_bad_value_names_the_variable_and_the_choices(monkeypatch):
  monkeypatch.setenv('HYPERMASK_CONV', 'cudnn')
  with pytest.raises(ValueError, match=r"HYPERMASK_CONV='cudnn'.*nhwc_vjp.*im2col.*xla"):
    backend.conv()


def test_the_chunk_input_gradient_copies_the_kernel_only_where_ynnpack_is_slow(monkeypatch):
  monkeypatch.delenv('HYPERMASK_CHUNK_INPUT_GRAD', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert [backend.chunk_input_grad(n) for n in (10, 24, 25, 30, 31, 350)] == [
      'direct', 'direct', 'transposed_copy', 'transposed_copy', 'direct', 'direct']
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.chunk_input_grad(25) == 'direct'
  monkeypatch.setenv('HYPERMASK_CHUNK_INPUT_GRAD', 'transposed_copy')
  assert backend.chunk_input_grad(10) == 'transposed_copy'


def test_one_rows_input_gradient_is_folded_on_cpu_only_unless_forced(monkeypatch):
  monkeypatch.delenv('HYPERMASK_ROW_INPUT_GRAD', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert backend.row_input_grad() == 'fold'
  for accelerator in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda accelerator=accelerator: accelerator)
    assert backend.row_input_grad() == 'two_rows'
  monkeypatch.setenv('HYPERMASK_ROW_INPUT_GRAD', 'fold')
  assert backend.row_input_grad() == 'fold'


def test_512_bit_vectors_on_avx512_cpus_unless_forced(monkeypatch):
  monkeypatch.delenv('HYPERMASK_CPU_VECTOR_WIDTH', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(backend, 'cpu_has_avx512', lambda: True)
  assert backend.compiler_options() == {'xla_cpu_prefer_vector_width': 512}
  monkeypatch.setattr(backend, 'cpu_has_avx512', lambda: False)
  assert backend.compiler_options() == {}
  monkeypatch.setenv('HYPERMASK_CPU_VECTOR_WIDTH', '256')
  assert backend.compiler_options() == {'xla_cpu_prefer_vector_width': 256}
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.compiler_options() == {}


def test_both_vector_widths_give_the_same_update():
  """A wide-layer gradient and Adam step (elementwise and reductions) compiled both ways."""
  keys = jax.random.split(jax.random.key(0), 3)
  params = {'kernel': jax.random.normal(keys[0], (3000, 20)), 'bias': jnp.zeros(3000)}
  x = jax.random.normal(keys[1], (5, 20))
  tx = optax.adam(1e-3)

  def step(params, state):
    loss = lambda p: jnp.sum(jnp.tanh(wide_dense.wide_dense(x, p['kernel'], p['bias'], 3)))
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), loss(params)

  results = [jax.jit(step, compiler_options={'xla_cpu_prefer_vector_width': width})(
      params, tx.init(params)) for width in (256, 512)]
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
