"""The C++ kernels (cpu_kernels.py): how they are built, the chunk layer's forward pass into
pieces (hypernet.chunk_dense_pieces) and its backward pass (hypernet.chunk_dense_backward_ffi)
against their products in float64, the wide layer's
product (wide_dense.wide_rows_ffi) against the float64 product, and the 3x3 convolution
(layers.kernel_conv3x3) against XLA's in float64. The Adam kernel's numbers are
checked in tests/test_factored_adam.py."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypermask_jax import backend
from hypermask_jax import cpu_kernels
from hypermask_jax import factored_adam
from hypermask_jax import hypernet
from hypermask_jax import layers
from hypermask_jax import trainer as trainer_lib
from hypermask_jax import wide_dense
from hypermask_jax.methods.hnet import HNET
from tests import test_hnet
from tests.conftest import fresh_program
from tests.conftest import needs_cpu_kernels
from tests.conftest import normals


def operands(rows, n, m, seed=0):
  return tuple(normals(seed, (rows, n), (rows, m), (n, m)))


@needs_cpu_kernels
@pytest.mark.parametrize('rows,n,m', [
    (25, 25, 4100),  # HNET Permuted MNIST's fan-in: 4 passes of 7, 6, 6, 6 rows; 5 blocks, a tail
    (12, 10, 42000),  # HNET Split MNIST's layer
    (3, 5, 37),  # one block, shorter than two vectors
    (8, 1, 1024)])  # one pass of 8 rows, exactly one block
def test_the_chunk_backward_kernel_is_the_two_products(rows, n, m):
  """d_kernel = x^T ct, d_x = ct kernel^T and d_bias = ct's row sum, each within float32
  rounding of the float64 products (relative to their largest entries)."""
  x, ct, kernel = operands(rows, n, m)
  got = jax.jit(hypernet.chunk_dense_backward_ffi)(x, ct, kernel)
  assert_products(got, x, ct, kernel)


def assert_products(got, x, ct, kernel):
  """got = (x^T ct, ct kernel^T, ct's row sum) within float32 rounding of float64's."""
  x64, ct64, kernel64 = (np.asarray(a, np.float64) for a in (x, ct, kernel))
  for g, want in zip(got, (x64.T @ ct64, ct64 @ kernel64.T, ct64.sum(0))):
    assert g.shape == want.shape and g.dtype == jnp.float32
    assert np.abs(np.asarray(g, np.float64) - want).max() <= 2e-6 * np.abs(want).max()


# Pieces of a [rows, m] output read row after row: across rows, empty, one entry, the whole,
# and short of the whole (the rest left out).
# Columns go in steps of two vectors, the last step of a block partial where it is short.
PIECES = [(25, 25, 4100, (5000, 3, 0, 90000, 4101)),  # HNET Permuted MNIST's fan-in: passes of
          # 6 rows and one, 5 blocks of columns, the last of 4
          (7, 10, 37, (259,)),  # one piece, the whole output; a partial last step
          (3, 5, 70, (1, 2, 150))]  # rows in one pass of 3; a partial last step


def cut(flat, sizes):
  return np.split(flat, np.cumsum(sizes))[:len(sizes)]


@needs_cpu_kernels
@pytest.mark.parametrize('rows,n,m,sizes', PIECES)
def test_the_chunk_layer_kernel_writes_its_outputs_into_the_pieces(rows, n, m, sizes):
  """chunk_dense_pieces by the kernel (ChunkDense): x kernel + bias, read row after row and cut,
  within float32 rounding of float64's; its gradient from the pieces' gradients (zeros past
  them) is the backward kernel's, the three products of the whole [rows, m] gradient."""
  x, _, kernel = operands(rows, n, m)
  bias = jnp.asarray(np.random.default_rng(1).standard_normal(m), jnp.float32)
  layer = jax.jit(hypernet.chunk_dense_pieces, static_argnums=3)
  hlo = layer.lower(x, kernel, bias, sizes).compile().as_text()
  assert cpu_kernels.TARGETS['ChunkDense'] in hlo
  want = (np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
          + np.asarray(bias, np.float64)).ravel()
  got = layer(x, kernel, bias, sizes)
  assert [g.shape for g in got] == [(size,) for size in sizes]
  for g, w in zip(got, cut(want, sizes)):
    assert g.dtype == jnp.float32
    assert np.abs(np.asarray(g, np.float64) - w).max(initial=0) <= 2e-6 * np.abs(want).max()
  cts = tuple(jnp.asarray(np.random.default_rng(2).standard_normal(size), jnp.float32)
              for size in sizes)
  ct = np.concatenate([*cts, np.zeros(rows * m - sum(sizes), np.float32)]).reshape(rows, m)
  products = lambda x, kernel, bias: sum(
      jnp.vdot(p, c) for p, c in zip(hypernet.chunk_dense_pieces(x, kernel, bias, sizes), cts))
  d_x, d_kernel, d_bias = jax.jit(jax.grad(products, (0, 1, 2)))(x, kernel, bias)
  assert_products((d_kernel, d_x, d_bias), x, ct, kernel)


@needs_cpu_kernels
def test_the_chunk_kernels_under_vmap_are_each_run_alone():
  runs = [operands(9, 4, 2100, seed) for seed in range(3)]
  stacked = [jnp.stack(parts) for parts in zip(*runs)]
  batched = jax.jit(jax.vmap(hypernet.chunk_dense_backward_ffi))(*stacked)
  for i, run in enumerate(runs):
    alone = jax.jit(hypernet.chunk_dense_backward_ffi)(*run)
    for b, a in zip(batched, alone):
      np.testing.assert_array_equal(b[i], a)
  sizes = (5000, 12000, 1)  # of 9 rows of 2100

  def layer_and_gradients(x, kernel, bias, cts):
    pieces, vjp = jax.vjp(lambda *a: hypernet.chunk_dense_pieces(*a, sizes), x, kernel, bias)
    return pieces, vjp(cts)

  def run(seed):
    x, _, kernel = operands(9, 4, 2100, seed)
    cts = tuple(jnp.asarray(np.random.default_rng(seed).standard_normal(size), jnp.float32)
                for size in sizes)
    return x, kernel, kernel[seed], cts

  runs = [run(seed) for seed in range(3)]
  batched = jax.jit(jax.vmap(layer_and_gradients))(*jax.tree.map(lambda *a: jnp.stack(a), *runs))
  for i, one in enumerate(runs):
    alone = jax.jit(layer_and_gradients)(*one)
    jax.tree.map(lambda b, a, i=i: np.testing.assert_array_equal(b[i], a), batched, alone)


@needs_cpu_kernels
def test_the_chunk_backward_is_the_kernel_on_cpu_for_small_fan_ins_unless_forced(monkeypatch):
  """The default on CPU: the kernel up to fan-in 64, XLA's products above (Permuted MNIST-100's
  350), and the compiled backward pass calls the kernel exactly when chosen, as the layer cut
  into pieces calls both kernels."""
  monkeypatch.delenv('HYPERMASK_CHUNK_BACKWARD', raising=False)
  assert [backend.chunk_backward(n) for n in (10, 25, 64, 65, 350)] == [
      'ffi', 'ffi', 'ffi', 'direct', 'direct']
  for forced in ('direct', 'transposed_copy', 'ffi'):
    monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', forced)
    assert backend.chunk_backward(350) == forced
    x, ct, kernel = operands(4, 3, 500)
    grad = jax.grad(lambda x, kernel: jnp.sum(hypernet.chunk_dense(x, kernel, kernel[0]) * ct),
                    (0, 1))
    hlo = jax.jit(grad).lower(x, kernel).as_text()
    assert (cpu_kernels.TARGETS['ChunkDenseBackward'] in hlo) == (forced == 'ffi')
    cut = lambda x, kernel: hypernet.chunk_dense_pieces(x, kernel, kernel[0], (1500, 300))
    hlo = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(cut(*a)[1])), (0, 1))).lower(
        x, kernel).as_text()
    for target in ('ChunkDense', 'ChunkDenseBackward'):
      assert (cpu_kernels.TARGETS[target] in hlo) == (forced == 'ffi')


@needs_cpu_kernels
@pytest.mark.parametrize('rows,n,m', [
    (10, 100, 4100),  # Permuted MNIST's fan-in (a padded last vector); 2 blocks, a last tile of 4
    (3, 25, 8197),  # Split MNIST's; 3 blocks, a last tile of 5
    (2, 16, 3),  # one tile of 3 kernel rows; whole vectors
    (1, 7, 20)])  # one row: tiles of 8, a last tile of 4; shorter than a vector
def test_the_wide_product_kernel_is_the_product(rows, n, m):
  """y = x kernel^T within float32 rounding of the float64 product (relative to its largest
  entry); the kernel's rows past m are never read (a tail tile copies its rows)."""
  r = np.random.default_rng(rows)
  x, kernel = (jnp.asarray(r.standard_normal(shape), jnp.float32) for shape in ((rows, n), (m, n)))
  y = jax.jit(wide_dense.wide_rows_ffi)(x, kernel)
  want = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64).T
  assert y.shape == want.shape and y.dtype == jnp.float32
  assert np.abs(np.asarray(y, np.float64) - want).max() <= 1e-6 * np.abs(want).max()


@needs_cpu_kernels
def test_the_wide_product_kernel_under_vmap_is_each_run_alone():
  r = np.random.default_rng(0)
  runs = [(jnp.asarray(r.standard_normal((5, 30)), jnp.float32),
           jnp.asarray(r.standard_normal((4500, 30)), jnp.float32)) for _ in range(3)]
  y = jax.jit(jax.vmap(wide_dense.wide_rows_ffi))(*(jnp.stack(parts) for parts in zip(*runs)))
  for i, run in enumerate(runs):
    np.testing.assert_array_equal(y[i], jax.jit(wide_dense.wide_rows_ffi)(*run))


@needs_cpu_kernels
def test_the_wide_product_is_the_kernel_for_two_rows_or_more_where_chosen(monkeypatch):
  """The default: the kernel on CPUs without AVX-512, XLA's dot with it; forced either way;
  one row always XLA's (float64: test_float64_layers_take_xlas_code). The compiled layer calls
  the kernel exactly then, and its outputs and gradients are XLA's within float32 rounding."""
  monkeypatch.delenv('HYPERMASK_WIDE_PRODUCT', raising=False)
  monkeypatch.setattr(backend, 'cpu_has_avx512', lambda: True)
  assert backend.wide_product() == 'xla'
  monkeypatch.setattr(backend, 'cpu_has_avx512', lambda: False)
  assert backend.wide_product() == 'ffi'
  r = np.random.default_rng(1)
  kernel = jnp.asarray(r.standard_normal((3000, 20)), jnp.float32)
  bias = jnp.asarray(r.standard_normal(3000), jnp.float32)
  ct = jnp.asarray(r.standard_normal((4, 3000)), jnp.float32)
  inputs = {rows: jnp.asarray(r.standard_normal((rows, 20)), jnp.float32) for rows in (4, 1)}
  results = {}
  for forced in ('xla', 'ffi'):
    monkeypatch.setenv('HYPERMASK_WIDE_PRODUCT', forced)
    assert backend.wide_product() == forced
    for rows, x in inputs.items():
      loss = lambda x, kernel: jnp.sum(wide_dense.wide_dense(x, kernel, bias, 3) * ct[:rows])
      fn = jax.jit(jax.value_and_grad(loss, (0, 1)))
      hlo = fn.lower(x, kernel).as_text()
      assert (cpu_kernels.TARGETS['WideRows'] in hlo) == (forced == 'ffi' and rows > 1)
      if rows == 4:
        results[forced] = fn(x, kernel)
  for got, want in zip(jax.tree.leaves(results['ffi']), jax.tree.leaves(results['xla'])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def conv_operands(n, h, w, c, f, padding, seed=0):
  r = np.random.default_rng(seed)
  shapes = ((n, h, w, c), (3, 3, c, f), (n, h + 2 * padding - 2, w + 2 * padding - 2, f))
  return tuple(jnp.asarray(r.standard_normal(shape), jnp.float32) for shape in shapes)


@needs_cpu_kernels
@pytest.mark.parametrize('n,h,w,c,f,padding', [
    (3, 9, 13, 16, 32, 1),  # rows of 13: a tile of 8 and a tail of 5; two vectors of features
    (2, 10, 10, 32, 16, 0),  # one vector of features (on AVX-512); no border
    (2, 6, 7, 16, 48, 2),  # 48 features: not whole pairs of AVX-512 vectors; the widest border
    (1, 8, 8, 16, 16, 1)])  # one image: one group for the kernel's gradient
def test_the_conv_kernels_are_the_convolution_and_its_gradients(n, h, w, c, f, padding):
  """The output, the input's gradient and the kernel's gradient, each within float32 rounding
  of XLA's convolution and its gradients in float64 (relative to their largest entries)."""
  x, kernel, ct = conv_operands(n, h, w, c, f, padding)
  out, vjp = jax.vjp(lambda x, k: layers.kernel_conv3x3(x, k, padding), x, kernel)
  got = (out, *jax.jit(vjp)(ct))
  with jax.enable_x64(True):
    x64, kernel64, ct64 = (jnp.asarray(a, jnp.float64) for a in (x, kernel, ct))
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((padding, padding),) * 2,
                                                     dimension_numbers=layers.NHWC)
    want_out, want_vjp = jax.vjp(conv, x64, kernel64)
    want = (want_out, *want_vjp(ct64))
    for g, w in zip(got, want):
      assert g.shape == w.shape and g.dtype == jnp.float32
      assert np.abs(np.asarray(g, np.float64) - w).max() <= 2e-6 * np.abs(w).max()


@needs_cpu_kernels
def test_the_conv_kernels_under_vmap_are_each_run_alone():
  runs = [conv_operands(3, 8, 11, 16, 32, 1, seed) for seed in range(3)]
  def outputs(x, kernel, ct):
    out, vjp = jax.vjp(lambda x, k: layers.kernel_conv3x3(x, k, 1), x, kernel)
    return (out, *vjp(ct))
  stacked = jax.jit(jax.vmap(outputs))(*(jnp.stack(parts) for parts in zip(*runs)))
  for i, run in enumerate(runs):
    for batched, alone in zip(stacked, jax.jit(outputs)(*run)):
      np.testing.assert_array_equal(batched[i], alone)


@needs_cpu_kernels
def test_the_convs_are_the_kernels_on_cpu_where_the_channels_fit_unless_forced(monkeypatch):
  """The default on CPU: the kernels for stride 1 and channel counts that are multiples of 16
  (the first layer's 3 inputs: nhwc_vjp; the strided convs: im2col); the compiled gradient
  calls the kernels exactly when chosen."""
  monkeypatch.delenv('HYPERMASK_CONV', raising=False)
  assert backend.conv() == 'ffi'
  targets = (cpu_kernels.TARGETS['Conv3x3'], cpu_kernels.TARGETS['Conv3x3KernelGrad'])
  for forced, channels, stride, called in [(None, 16, 1, True), (None, 3, 1, False),
                                           (None, 16, 2, False), ('nhwc_vjp', 16, 1, False),
                                           ('ffi', 32, 1, True)]:
    if forced:
      monkeypatch.setenv('HYPERMASK_CONV', forced)
    x = jax.ShapeDtypeStruct((2, 8, 8, channels), jnp.float32)  # lowered, never run
    conv = layers.Conv3x3(16, stride=stride)
    params = jax.eval_shape(conv.init, jax.random.key(0), x)['params']
    grad = jax.grad(lambda p, x: jnp.sum(jnp.sin(conv.apply({'params': p}, x))), (0, 1))
    hlo = jax.jit(grad).lower(params, x).as_text()
    assert [t in hlo for t in targets] == [called, called], (forced, channels, stride)


@needs_cpu_kernels
@pytest.mark.slow  # compiles each layer in float64
def test_float64_layers_take_xlas_code(monkeypatch):
  """The kernels take float32: in float64 (the PyTorch parity check) the chunk layer, the
  convolutions and the wide layer run XLA's code, also where the kernels are forced."""
  for variable in ('HYPERMASK_CHUNK_BACKWARD', 'HYPERMASK_CONV', 'HYPERMASK_WIDE_PRODUCT'):
    monkeypatch.setenv(variable, 'ffi')
  with jax.enable_x64(True):
    x, ct, kernel = (a.astype(jnp.float64) for a in operands(4, 3, 500))
    chunk = lambda x, kernel: jnp.sum(hypernet.chunk_dense(x, kernel, kernel[0]) * ct)
    conv = layers.Conv3x3(16)
    images = jnp.ones((2, 8, 8, 16), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          conv.init(jax.random.key(0), images)['params'])
    conv_loss = lambda p, x: jnp.sum(jnp.sin(conv.apply({'params': p}, x)))
    wide = lambda x, kernel: jnp.sum(wide_dense.wide_dense(x, kernel.T, kernel[0], 4) * ct[:, :3])
    for loss, args, reference in [
        (chunk, (x, kernel), lambda x, kernel: jnp.sum((x @ kernel + kernel[0]) * ct)),
        (wide, (x, kernel[:, :3]), lambda x, kernel: jnp.sum((x @ kernel + kernel[0]) * ct[:, :3])),
        (conv_loss, (params, images), lambda p, x: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
            x, p['kernel'], (1, 1), ((1, 1),) * 2, dimension_numbers=layers.NHWC) + p['bias'])))]:
      hlo = jax.jit(jax.grad(loss, (0, 1))).lower(*args).as_text()
      assert not any(target in hlo for target in cpu_kernels.TARGETS.values())
      for got, want in zip(jax.tree.leaves(jax.grad(loss, (0, 1))(*args)),
                           jax.tree.leaves(jax.grad(reference, (0, 1))(*args))):
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-10)


def test_kernels_that_cannot_be_built_fall_back_to_xla(monkeypatch, tmp_path):
  """No compiler: XLA's code, with the reason; forcing a kernel then stops a run before it
  starts, with one line naming the variable."""
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setattr(cpu_kernels, 'CACHE', str(tmp_path / 'kernels'))
  variables = ('HYPERMASK_FACTORED_ADAM', 'HYPERMASK_CHUNK_BACKWARD', 'HYPERMASK_CONV')
  for variable in variables:
    monkeypatch.delenv(variable, raising=False)
  cpu_kernels.library.cache_clear()
  cpu_kernels.unavailable_reason.cache_clear()
  try:
    if jax.default_backend() == 'cpu':
      assert cpu_kernels.unavailable_reason().startswith('compiling them failed (')
    assert backend.factored_adam() == 'xla'
    assert [backend.chunk_backward(n) for n in (10, 25)] == ['direct', 'transposed_copy']
    assert backend.conv() == 'nhwc_vjp'
    for variable in variables:
      monkeypatch.setenv(variable, 'ffi')
      with pytest.raises(backend.BadVariable, match=f'^{variable}=ffi: its CPU kernel cannot '
                         'run here: '):
        backend.check_environment()  # a run checks at its start
      monkeypatch.delenv(variable)
  finally:
    cpu_kernels.library.cache_clear()
    cpu_kernels.unavailable_reason.cache_clear()


@needs_cpu_kernels
@pytest.mark.slow
def test_the_kernel_source_compiles_without_warnings(tmp_path):
  """The flags the library builds with, and -Wall -Wextra: the source stays clean (the XLA
  headers, included as system headers, are not checked)."""
  run = subprocess.run([os.environ.get('CXX', 'g++'), *cpu_kernels.FLAGS, '-Wall', '-Wextra',
                        '-Werror', '-isystem', jax.ffi.include_dir(), str(cpu_kernels.SOURCE),
                        '-o', str(tmp_path / 'k.so')], capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]


def build_command(home, compiler):
  """`python -m hypermask_jax.cpu_kernels` with its cache under `home`, as a process."""
  root = pathlib.Path(__file__).resolve().parents[1]
  return subprocess.Popen([sys.executable, '-m', 'hypermask_jax.cpu_kernels'], cwd=root,
                          text=True, env={**os.environ, 'HOME': str(home), 'CXX': str(compiler)},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_build_command_says_why_the_kernels_cannot_be_built(tmp_path):
  """No compiler: one line with the reason, exit status 1, and no library."""
  proc = build_command(tmp_path, tmp_path / 'no-such-compiler')
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  assert len(out.splitlines()) == 1
  assert out.startswith("hypermask_jax C++ kernels: compiling them failed (FileNotFoundError: ")
  assert out.rstrip().endswith("; the steps use XLA's own code instead")
  assert not list(tmp_path.rglob('*.so'))


@needs_cpu_kernels
@pytest.mark.slow
def test_processes_that_need_the_kernels_at_once_build_them_once(tmp_path):
  """Two processes (a test run's workers, a sweep's) start on a fresh cache together: the
  compiler runs once, the second waits for it, and both find the library; a third finds it
  built. Each says so in one line (`python -m hypermask_jax.cpu_kernels`)."""
  count = tmp_path / 'compiler_calls'
  compiler = tmp_path / 'counting-cxx'
  compiler.write_text(f'#!/bin/sh\necho call >> {count}\n'
                      f'exec {os.environ.get("CXX", "g++")} "$@"\n')
  compiler.chmod(0o755)
  folder = tmp_path / '.cache' / 'hypermask_jax' / 'kernels'  # cpu_kernels.CACHE under HOME
  for together in (2, 1):  # the third starts once the first two are done
    procs = [build_command(tmp_path, compiler) for _ in range(together)]
    for proc in procs:
      out, err = proc.communicate(timeout=600)
      assert proc.returncode == 0, err[-3000:]
      assert re.fullmatch(rf'hypermask_jax C\+\+ kernels: {re.escape(str(folder))}/'
                          r'cpu_kernels-\w+\.so \((built in [\d.]+ s|already built)\)\n', out)
      assert ('already built' in out) == (together == 1)
  assert count.read_text().splitlines() == ['call']
  assert len(list(folder.glob('cpu_kernels-*.so'))) == 1


@needs_cpu_kernels
@pytest.mark.slow
@pytest.mark.parametrize('extra_flags', [('-mno-avx512f',), ('-mno-avx512f', '-mno-avx2', '-mno-fma')])
def test_the_kernels_built_for_narrower_vectors_give_the_same_numbers(tmp_path, extra_flags):
  """The kernels' sums run on 16, 8 or 1 float at a time, as the compiler's target allows; built
  for AVX2 and for no vector extension, they pass the same checks (in a process of their own, as
  XLA keeps the first kernel registered under a name)."""
  code = f"""
from hypermask_jax import cpu_kernels
cpu_kernels.FLAGS += {extra_flags!r}
cpu_kernels.CACHE = {str(tmp_path)!r}
from tests import test_cpu_kernels
from tests import test_factored_adam
for rows, live, count in [(1, 1, 0), (4, 3, 0), (10, 10, 7)]:
  test_factored_adam.test_the_kernel_is_optax_adam_on_the_dense_gradient(rows, live, count)
for shape in [(25, 25, 4100), (3, 5, 37)]:
  test_cpu_kernels.test_the_chunk_backward_kernel_is_the_two_products(*shape)
for case in test_cpu_kernels.PIECES:
  test_cpu_kernels.test_the_chunk_layer_kernel_writes_its_outputs_into_the_pieces(*case)
for shape in [(3, 9, 13, 16, 32, 1), (2, 6, 7, 16, 48, 2)]:
  test_cpu_kernels.test_the_conv_kernels_are_the_convolution_and_its_gradients(*shape)
for shape in [(10, 100, 4100), (3, 25, 8197), (1, 7, 20)]:
  test_cpu_kernels.test_the_wide_product_kernel_is_the_product(*shape)
print('checked')
"""
  root = pathlib.Path(__file__).resolve().parents[1]
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=root)
  assert run.returncode == 0 and run.stdout.strip() == 'checked', run.stderr[-3000:]
  assert len(list(tmp_path.glob('cpu_kernels-*.so'))) == 1  # built with those flags


@needs_cpu_kernels
def test_the_kernels_flops_are_counted_from_the_compiled_program():
  """cpu_kernels.flops (XLA counts nothing for a custom call): the chunk layer's product, its
  backward's two products and the convolutions' forward and backward passes as XLA counts the same products
  and convolutions written in jax.numpy, dense Adam's 14 per entry, each call of a vmapped
  program with its runs."""
  x, ct, kernel = operands(6, 5, 300)
  products = lambda x, ct, kernel: (x.T @ ct, ct @ kernel.T)
  cost = jax.jit(products).lower(x, ct, kernel).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo = jax.jit(hypernet.chunk_dense_backward_ffi).lower(x, ct, kernel).compile().as_text()
  assert cpu_kernels.flops(hlo) == cost['flops'] == 4 * 6 * 5 * 300
  twice = jax.jit(jax.vmap(hypernet.chunk_dense_backward_ffi)).lower(
      *(jnp.stack([a, a]) for a in (x, ct, kernel))).compile().as_text()
  assert cpu_kernels.flops(twice) == 2 * 4 * 6 * 5 * 300
  layer = jax.jit(lambda x, kernel: hypernet.chunk_dense_pieces(x, kernel, kernel[0], (700, 800)))
  assert cpu_kernels.flops(layer.lower(x, kernel).compile().as_text()) == jax.jit(
      lambda x, k: x @ k).lower(x, kernel).compile().cost_analysis()['flops'] == 2 * 6 * 5 * 300
  p = jnp.ones((3, 700))
  adam = jax.jit(lambda g, p, mu, nu: factored_adam.dense_update(g, p, mu, nu, 1e-3, 0))
  assert cpu_kernels.flops(adam.lower(p, p, p, p).compile().as_text()) == 14 * 2100
  assert cpu_kernels.flops(jax.jit(products).lower(x, ct, kernel).compile().as_text()) == 0
  wide = jax.jit(wide_dense.wide_rows_ffi).lower(x, kernel.T).compile().as_text()
  assert cpu_kernels.flops(wide) == jax.jit(lambda x, k: x @ k).lower(
      x, kernel).compile().cost_analysis()['flops'] == 2 * 6 * 5 * 300
  for padding in (0, 1, 2):
    x, kernel, _ = conv_operands(2, 8, 9, 16, 32, padding)
    grad = lambda conv: jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1)))
    xla = grad(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((padding, padding),) * 2,
                                                         dimension_numbers=layers.NHWC))
    cost = xla.lower(x, kernel).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ours = grad(lambda x, k: layers.kernel_conv3x3(x, k, padding))
    assert cpu_kernels.flops(ours.lower(x, kernel).compile().as_text()) == cost['flops'] > 0


@needs_cpu_kernels
@pytest.mark.slow  # compiles the step twice
def test_hnet_training_with_the_chunk_backward_kernel_matches_xlas_products(
    synthetic_task_set, monkeypatch):
  """Two tasks of a small HNET program (the second regularising the first, with the
  lookahead), the chunk layer and its backward pass by the kernels and by XLA's products,
  YNNPACK off in both: the same losses within float rounding, and one trace of the step each."""
  config = test_hnet.tiny_config(num_tasks=2)
  monkeypatch.setenv('HYPERMASK_CPU_YNNPACK', 'off')
  losses = {}
  for form in ('ffi', 'direct'):
    monkeypatch.setenv('HYPERMASK_CHUNK_BACKWARD', form)
    trainer = trainer_lib.Trainer(config, HNET(config, synthetic_task_set.input_shape,
                                               synthetic_task_set.num_classes))
    state, data, hp = fresh_program(trainer, synthetic_task_set)
    hlo = trainer.train_steps.lower(state, data, hp, np.int32(5)).compile().as_text()
    for kernel in ('ChunkDense', 'ChunkDenseBackward'):
      assert (cpu_kernels.TARGETS[kernel] in hlo) == (form == 'ffi')
    per_task = []
    for task in range(2):
      state = trainer.begin_task(state, task, hp)
      state, metrics = trainer.train_steps(state, data, hp, np.int32(5))
      per_task.append(np.asarray(metrics['loss'])[..., :5])
    losses[form] = np.stack(per_task)
    assert trainer.traces['train_step'] == 1
  assert np.all(np.isfinite(losses['ffi']))
  np.testing.assert_allclose(losses['ffi'], losses['direct'], rtol=1e-5)
