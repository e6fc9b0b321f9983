"""Backend-dependent choices: defaults per backend, forced by environment variables."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hypermask_jax import backend
from hypermask_jax import cpu_kernels
from hypermask_jax import trainer as trainer_lib
from hypermask_jax import wide_dense
from hypermask_jax.methods import METHODS
from tests import test_hnet
from tests import test_train
from tests.conftest import fresh_program
from tests.conftest import normals


def test_conv_defaults_to_the_kernels_else_nhwc_vjp_on_cpu_and_xla_elsewhere(monkeypatch):
  monkeypatch.delenv('HYPERMASK_CONV', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(cpu_kernels, 'unavailable_reason', lambda: '')
  assert backend.conv() == 'ffi'
  monkeypatch.setattr(cpu_kernels, 'unavailable_reason', lambda: 'no compiler')
  assert backend.conv() == 'nhwc_vjp'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.conv() == 'xla'


@pytest.mark.parametrize('value', ['nhwc_vjp', 'im2col', 'xla'])
def test_conv_is_forced_by_the_environment(monkeypatch, value):
  monkeypatch.setenv('HYPERMASK_CONV', value)
  assert backend.conv() == value


def test_a_bad_value_names_the_variable_and_the_choices(monkeypatch):
  monkeypatch.setenv('HYPERMASK_CONV', 'cudnn')
  with pytest.raises(ValueError, match=r"HYPERMASK_CONV='cudnn'.*nhwc_vjp.*im2col.*xla.*ffi"):
    backend.conv()


def test_the_chunk_backward_is_xlas_direct_products_off_cpu_unless_forced(monkeypatch):
  """On GPU and TPU, one dot per gradient; the CPU's choices are checked in
  tests/test_cpu_kernels.py."""
  monkeypatch.delenv('HYPERMASK_CHUNK_BACKWARD', raising=False)
  for accelerator in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda accelerator=accelerator: accelerator)
    assert [backend.chunk_backward(n) for n in (10, 25, 350)] == ['direct'] * 3
  monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', 'transposed_copy')
  assert backend.chunk_backward(10) == 'transposed_copy'


@pytest.mark.parametrize('variable,choice,on_cpu,elsewhere', [
    ('HYPERMASK_ROW_INPUT_GRAD', backend.row_input_grad, 'fold', 'two_rows'),  # one row's product
    ('HYPERMASK_SHUFFLE_ROUNDS', backend.shuffle_rounds, 'loop', 'unrolled')])
def test_the_cpu_forms_are_the_defaults_on_cpu_only_unless_forced(monkeypatch, variable, choice,
                                                                  on_cpu, elsewhere):
  monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert choice() == on_cpu
  for accelerator in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda accelerator=accelerator: accelerator)
    assert choice() == elsewhere
  monkeypatch.setenv(variable, on_cpu)
  assert choice() == on_cpu


def test_512_bit_vectors_on_avx512_cpus_unless_forced(monkeypatch):
  monkeypatch.delenv('HYPERMASK_CPU_VECTOR_WIDTH', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(backend, 'cpu_has_avx512', lambda: True)
  assert backend.compiler_options('hypermask') == {'xla_cpu_prefer_vector_width': 512,
                                                    **backend.COPY_INSERTION}
  monkeypatch.setattr(backend, 'cpu_has_avx512', lambda: False)
  assert backend.compiler_options('hypermask') == backend.COPY_INSERTION
  monkeypatch.setenv('HYPERMASK_CPU_VECTOR_WIDTH', '256')
  assert backend.compiler_options('hypermask') == {'xla_cpu_prefer_vector_width': 256,
                                                    **backend.COPY_INSERTION}
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.compiler_options('hypermask') == {}


def test_ynnpack_is_off_for_hnet_on_cpu_only_unless_forced(monkeypatch):
  """Off for HNET unless its chunked hypernetwork's output layer runs its backward pass in
  the CPU kernel (fan-in up to 64; with a full hypernetwork, None, it is off)."""
  monkeypatch.delenv('HYPERMASK_CPU_YNNPACK', raising=False)
  monkeypatch.delenv('HYPERMASK_CHUNK_BACKWARD', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(backend, 'cpu_has_avx512', lambda: False)
  monkeypatch.setattr(backend, '_cpu_kernel', lambda *args: True)
  on = backend.COPY_INSERTION
  off = {'xla_cpu_experimental_ynn_fusion_type': '', **on}
  assert [backend.compiler_options(m) for m in ('hnet', 'hypermask', 'finetune', 'joint')] == [
      off, on, on, on]
  assert [backend.compiler_options('hnet', n) for n in (10, 25, 64, 65, 350)] == [
      on, on, on, off, off]
  assert backend.compiler_options('hypermask', 350) == on
  monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', 'direct')
  assert backend.compiler_options('hnet', 25) == off
  monkeypatch.setattr(backend, '_cpu_kernel', lambda *args: False)  # no compiler, say
  monkeypatch.delenv('HYPERMASK_CHUNK_BACKWARD')
  assert backend.compiler_options('hnet', 25) == off
  monkeypatch.setenv('HYPERMASK_CPU_YNNPACK', 'off')
  assert backend.compiler_options('hypermask') == off
  monkeypatch.setenv('HYPERMASK_CPU_YNNPACK', 'on')
  assert backend.compiler_options('hnet') == on
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setenv('HYPERMASK_CPU_YNNPACK', 'off')
  assert backend.compiler_options('hnet') == {}


@pytest.mark.slow  # compiles the step twice
@pytest.mark.parametrize('method', ['hnet', 'hypermask'])
def test_ynnpack_reaches_the_compiled_step_and_changes_only_the_rounding(
    synthetic_task_set, monkeypatch, method):
  """The trainer compiles with its method's choice: by default an HNET step holds no YNNPACK
  fusion (here with XLA's products in the chunk layer's backward pass) and a HyperMask step
  does; forced the other way, the two steps' losses over two tasks (the second regularising
  the first) agree to float rounding."""
  config = (test_hnet.tiny_config(num_tasks=2) if method == 'hnet'
            else test_train.tiny_config(num_tasks=2))
  monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', 'direct')
  runs = {}
  for setting in ('default', 'on' if method == 'hnet' else 'off'):
    if setting == 'default':
      monkeypatch.delenv('HYPERMASK_CPU_YNNPACK', raising=False)
    else:
      monkeypatch.setenv('HYPERMASK_CPU_YNNPACK', setting)
    data = synthetic_task_set
    trainer = trainer_lib.Trainer(config, METHODS[method](config, data.input_shape,
                                                          data.num_classes))
    state, data, hp = fresh_program(trainer, data)
    compiled = trainer.train_steps.lower(state, data, hp, np.int32(3)).compile()
    hlo = compiled.as_text()
    losses = []
    for task in range(2):
      state = trainer.begin_task(state, task, hp)
      state, metrics = compiled(state, data, hp, np.int32(3))
      losses.append(np.asarray(metrics['loss'])[..., :3])
    runs[setting] = ('__ynn_fusion' in hlo, np.stack(losses))
  (default_ynn, default_losses), (forced_ynn, forced_losses) = runs.values()
  assert (default_ynn, forced_ynn) == ((False, True) if method == 'hnet' else (True, False))
  np.testing.assert_allclose(forced_losses, default_losses, rtol=1e-5)


@pytest.mark.slow  # compiles the step twice
def test_copy_insertions_region_analysis_drops_the_pass_through_copies_and_changes_no_number(
    synthetic_task_set, monkeypatch):
  """COPY_INSERTION: at task 0 the regulariser's switch passes the HNET gradients through
  (regularizers.output_reg_and_grad); without the region analysis XLA:CPU copied them there
  (here the chunk layer's bias gradient, [chunk_size], made by XLA's products: from the CPU
  kernel, ChunkDenseBackward, it passes through uncopied either way), with it not. The losses
  and the parameters after two tasks are the same to the bit."""
  monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', 'direct')
  config = test_hnet.tiny_config(num_tasks=2)
  data = synthetic_task_set
  default = backend.compiler_options
  runs = {}
  for analysis in (True, False):
    monkeypatch.setattr(backend, 'compiler_options', lambda method, fan_in, analysis=analysis: {
        k: v for k, v in default(method, fan_in).items()
        if analysis or k not in backend.COPY_INSERTION})
    trainer = trainer_lib.Trainer(config, METHODS['hnet'](config, data.input_shape,
                                                          data.num_classes))
    state, task_set, hp = fresh_program(trainer, data)
    compiled = trainer.train_steps.lower(state, task_set, hp, np.int32(3)).compile()
    bias_copies = len(re.findall(rf'= f32\[1,{config.chunk_size}\]\S* copy\(', compiled.as_text()))
    losses = []
    for task in range(2):
      state = trainer.begin_task(state, task, hp)
      state, metrics = compiled(state, task_set, hp, np.int32(3))
      losses.append(np.asarray(metrics['loss'])[..., :3])
    runs[analysis] = (bias_copies, np.stack(losses), state.params)
  assert runs[True][0] == 0 < runs[False][0]
  np.testing.assert_array_equal(runs[True][1], runs[False][1])
  for a, b in zip(jax.tree.leaves(runs[True][2]), jax.tree.leaves(runs[False][2])):
    np.testing.assert_array_equal(a, b)


def test_quick_compile_is_added_to_the_state_initialisation_on_cpu_only(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  for method in ('hnet', 'hypermask'):
    assert backend.init_compiler_options(method) == {**backend.compiler_options(method),
                                                     **backend.QUICK_COMPILE}
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.init_compiler_options('hnet') == {}


def init_trainer(method, data):
  config = (test_hnet.tiny_config(num_tasks=2) if method == 'hnet'
            else test_train.tiny_config(num_tasks=2))
  trainer = trainer_lib.Trainer(config, METHODS[method](config, data.input_shape,
                                                        data.num_classes))
  return trainer, trainer_lib.hyperparams([config])


def test_the_state_initialisation_compiles_with_its_own_options(synthetic_task_set,
                                                                monkeypatch):
  """The trainer compiles init_state with backend.init_compiler_options: an option XLA does
  not know makes it fail."""
  monkeypatch.setattr(backend, 'init_compiler_options',
                      lambda method, fan_in: {'xla_no_such_option': 1})
  trainer, hp = init_trainer('hnet', synthetic_task_set)
  with pytest.raises(Exception, match='xla_no_such_option'):
    trainer.init_state(hp)


@pytest.mark.slow
@pytest.mark.parametrize('method', ['hnet', 'hypermask'])
def test_the_state_initialisation_with_quick_compile_is_the_same_state(synthetic_task_set,
                                                                       method):
  """QUICK_COMPILE: the state equals, to the bit, the one compiled with the step's options
  (XLA's default -O2)."""
  trainer, hp = init_trainer(method, synthetic_task_set)
  quick = trainer.init_state(hp)
  default = jax.jit(trainer._init_state, compiler_options=trainer.options)(hp)
  for a, b in zip(jax.tree.leaves(quick), jax.tree.leaves(default), strict=True):
    np.testing.assert_array_equal(a, b)


def test_both_vector_widths_give_the_same_update():
  """A wide-layer gradient and Adam step (elementwise and reductions) compiled both ways."""
  kernel, x = normals(0, (3000, 20), (5, 20))
  params = {'kernel': kernel, 'bias': jnp.zeros(3000)}
  tx = optax.adam(1e-3)

  def step(params, state):
    loss = lambda p: jnp.sum(jnp.tanh(wide_dense.wide_dense(x, p['kernel'], p['bias'], 3)))
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), loss(params)

  results = [jax.jit(step, compiler_options={'xla_cpu_prefer_vector_width': width})(
      params, tx.init(params)) for width in (256, 512)]
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
