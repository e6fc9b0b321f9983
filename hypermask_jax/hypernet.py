"""Hypernetworks: task embedding -> flat output, one row per requested task.

HMLP maps the embedding straight to all outputs; ChunkedHMLP produces them in
chunks, from [chunk embedding ; task embedding], all chunks in one batch.
Task embeddings (N(0, 1), [max_tasks, E]) are part of the params, as are the
chunk embeddings (N(0, 1)). HMLP's output layer is a `wide_dense.WideDense`
(kernel [outputs, hidden], as PyTorch's nn.Linear stores it; see that module
for why).

Dense layers are initialised as `weight_init` says (config.hnet_init): 'torch',
PyTorch's default Linear init (HyperMask, through hypnettorch's default), or
'xavier', Xavier-uniform weights and zero biases (how hypercl initialised HNET
for its published results).
"""

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import backend
from hypermask_jax import cpu_kernels
from hypermask_jax.layers import torch_dense
from hypermask_jax.wide_dense import WideDense

ACTIVATIONS = {'elu': nn.elu, 'relu': nn.relu}


def _dense(features, fan_in, init, name):
  if init == 'xavier':
    return nn.Dense(features, name=name, kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.zeros)
  return torch_dense(features, fan_in, name=name)


class ChunkDense(nn.Module):
  """A Dense layer (the same params and init as `_dense`) with a hand-written gradient.

  For ChunkedHMLP's output layer: few rows (tasks x chunks, 12 to 25,000) and
  many outputs (the chunk size, 7500 to 78000). With autodiff's gradient of
  nn.Dense, XLA:CPU (jax 0.10.2) spent much of the published HNET steps
  outside the matmuls:
  - the bias gradient, a sum over the short row axis, went to YNNPACK's
    reduction: 3.9 ms for [12, 42000], where the same sum inside a matmul
    takes 0.07 ms;
  - the kernel gradient came out of its dot as [outputs, fan_in] and was
    transposed back, and the kernel and the output gradient were transposed
    for the other dot: copies of the whole layer at every step, and Adam
    read the gradient strided.
  Here the kernel gradient is one matmul of x with the output gradient, laid
  out as the params are, and the bias gradient one of a row of ones with it
  (as one matmul of [x, 1], the kernel's rows were then sliced off as a copy:
  0.3 of the 9 ms published HNET Permuted MNIST step at task 1 on a Zen 5
  EPYC; no change on Split MNIST and Permuted MNIST-100); the input
  gradient is the output gradient times the kernel's transpose, in the form
  `backend.chunk_backward` picks for the fan-in. On CPU, for fan-ins up to
  64, the kernel's, the input's and the bias's gradients are instead computed
  together by cpu_kernels.cc's ChunkDenseBackward, in one pass over the
  kernel and the output gradient (`chunk_dense_backward_ffi`). The values equal nn.Dense's
  and its gradients up to float rounding (tests/test_hypernet.py). HMLP's
  `wide_dense.WideDense` does not fit here: it stores the kernel transposed
  (not nn.Dense's params, which the chunked parity with hypnettorch maps), and
  above 16 rows its bias gradient is the row sum this layer avoids.

  With `pieces` (sizes), the outputs come read row after row as one flat
  vector and cut into consecutive pieces of those sizes, the rest left out
  (`chunk_dense_pieces`).
  """
  features: int
  weight_init: str = 'torch'

  @nn.compact
  def __call__(self, x, pieces=None):
    fan_in = x.shape[-1]
    dense = _dense(self.features, fan_in, self.weight_init, None)
    kernel = self.param('kernel', dense.kernel_init, (fan_in, self.features))
    bias = self.param('bias', dense.bias_init, (self.features,))
    if pieces is not None:
      return chunk_dense_pieces(x.reshape(-1, fan_in), kernel, bias, tuple(pieces))
    out = chunk_dense(x.reshape(-1, fan_in), kernel, bias)
    return out.reshape(*x.shape[:-1], self.features)


@jax.custom_vjp
def chunk_dense(x, kernel, bias):
  """x [r, n] @ kernel [n, m] + bias [m] -> [r, m]."""
  return x @ kernel + bias


def _chunk_dense_forward(x, kernel, bias):
  return chunk_dense(x, kernel, bias), (x, kernel)


def _chunk_dense_backward(residuals, ct):
  x, kernel = residuals
  form = backend.chunk_backward(kernel.shape[0])
  if form == 'ffi' and x.dtype == ct.dtype == kernel.dtype == jnp.float32:  # the kernel's type
    d_kernel, d_x, d_bias = chunk_dense_backward_ffi(x, ct, kernel)
    return d_x, d_kernel, d_bias
  d_bias = jax.lax.dot_general(jnp.ones((x.shape[0],), x.dtype), ct, (((0,), (0,)), ((), ())))
  d_kernel = jax.lax.dot_general(x, ct, (((0,), (0,)), ((), ())))  # [n, m]
  if form == 'direct':
    d_x = jax.lax.dot_general(ct, kernel, (((1,), (1,)), ((), ())))
  else:  # The barrier keeps the transposed kernel a copy, not folded back into the dot.
    d_x = ct @ jax.lax.optimization_barrier(kernel.T)
  return d_x, d_kernel, d_bias


def chunk_dense_backward_ffi(x, ct, kernel):
  """(x^T @ ct, ct @ kernel^T, ct's row sum) for x [r, n], ct [r, m], kernel [n, m], by the CPU
  kernel. ct may instead be a tuple of pieces: [r, m] read row after row as one flat vector,
  cut into consecutive pieces, zeros past the last (`chunk_dense_pieces`' output gradient).

  XLA:CPU runs these two thin products ([n, r] x [r, m] and [r, m] x [m, n], r
  and n in the tens, m in the tens of thousands) far below its matmul rate,
  reading the kernel and ct once for each and copying the kernel transposed
  for the second. The kernel reads both once, for both products (measured in
  backend.py, HYPERMASK_CHUNK_BACKWARD). It sums d_kernel over the rows in
  order and d_x over the columns in blocks, so both differ from XLA's
  products by float rounding; the row sum adds the rows in order.
  """
  cpu_kernels.library()  # registers the kernel with XLA
  call = jax.ffi.ffi_call(cpu_kernels.TARGETS['ChunkDenseBackward'],
                          (jax.ShapeDtypeStruct(kernel.shape, kernel.dtype),
                           jax.ShapeDtypeStruct(x.shape, x.dtype),
                           jax.ShapeDtypeStruct(kernel.shape[-1:], kernel.dtype)),
                          vmap_method='broadcast_all')
  return call(x, kernel, *(ct if isinstance(ct, tuple) else (ct,)))


chunk_dense.defvjp(_chunk_dense_forward, _chunk_dense_backward)


def chunk_dense_pieces(x, kernel, bias, sizes):
  """chunk_dense(x, kernel, bias) read row after row as one flat vector, cut into consecutive
  pieces of `sizes` (a tuple of ints, at most r m in all); the entries past them are left out.

  A chunked hypernetwork's output for one task, cut into the target's
  tensors (`layout.Layout.assemble`). Through XLA, those tensors are slices
  of the flat output, which XLA:CPU copies, and their gradient is a
  concatenation back into one: two passes over the whole output. Where
  `backend.chunk_backward` picks the CPU kernels (and in float32),
  ChunkDense writes the layer's outputs straight into the pieces, each
  output's terms summed in order with fused multiply-adds (so the values
  differ from XLA's product by float rounding), and ChunkDenseBackward reads
  the pieces' gradients in place of the concatenation.
  """
  if (backend.chunk_backward(kernel.shape[0]) == 'ffi'
      and x.dtype == kernel.dtype == bias.dtype == jnp.float32):  # the kernels' type
    return _chunk_dense_pieces_ffi(x, kernel, bias, sizes)
  return tuple(jnp.split(chunk_dense(x, kernel, bias).reshape(-1), np.cumsum(sizes))[:len(sizes)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunk_dense_pieces_ffi(x, kernel, bias, sizes):
  cpu_kernels.library()  # registers the kernel with XLA
  call = jax.ffi.ffi_call(cpu_kernels.TARGETS['ChunkDense'],
                          tuple(jax.ShapeDtypeStruct((size,), x.dtype) for size in sizes),
                          vmap_method='broadcast_all')
  return tuple(call(x, kernel, bias))


def _chunk_dense_pieces_forward(x, kernel, bias, sizes):
  return _chunk_dense_pieces_ffi(x, kernel, bias, sizes), (x, kernel)


def _chunk_dense_pieces_backward(sizes, residuals, cts):
  del sizes
  x, kernel = residuals
  d_kernel, d_x, d_bias = chunk_dense_backward_ffi(x, tuple(cts), kernel)
  return d_x, d_kernel, d_bias


_chunk_dense_pieces_ffi.defvjp(_chunk_dense_pieces_forward, _chunk_dense_pieces_backward)


def _hidden(x, hidden, activation, init):
  for i, features in enumerate(hidden):
    x = ACTIVATIONS[activation](_dense(features, x.shape[-1], init, f'dense_{i}')(x))
  return x


class HMLP(nn.Module):
  """Dense layers over the task embedding, straight to all num_outputs."""
  num_outputs: int
  max_tasks: int
  embedding_size: int
  hidden: Sequence[int]
  activation: str = 'elu'
  weight_init: str = 'torch'

  @nn.compact
  def __call__(self, tasks, live_rows=None, targets=None, hidden_only=False):
    """tasks: int [k] -> raw outputs [k, num_outputs], one batched matmul for all k rows.

    live_rows (default k, may be traced): only the first live_rows rows go
    through the output layer's products; the others hold its bias. With
    targets, (outputs of tasks[0], squared distances), as `distances`.
    hidden_only: the output layer's input rows [k, hidden[-1]] instead.
    """
    embeddings = self.param('embeddings', nn.initializers.normal(1.0),
                            (self.max_tasks, self.embedding_size))
    x = _hidden(jnp.take(embeddings, tasks, axis=0), self.hidden, self.activation,
                self.weight_init)
    if hidden_only:
      return x
    return WideDense(self.num_outputs, init=self.weight_init, name='out')(x, live_rows, targets)


class ChunkedHMLP(nn.Module):
  """One MLP shared by all chunks: [chunk embedding ; task embedding] -> chunk_size outputs.

  The chunk embeddings ([num_chunks, chunk_embedding_size], learned, shared by
  all tasks) tell the MLP which chunk to produce; the chunks are concatenated
  and cut to num_outputs. Chunk boundaries ignore layer boundaries.
  """
  num_outputs: int
  max_tasks: int
  embedding_size: int
  hidden: Sequence[int]
  chunk_size: int
  chunk_embedding_size: int
  activation: str = 'elu'
  weight_init: str = 'torch'

  @property
  def num_chunks(self):
    return math.ceil(self.num_outputs / self.chunk_size)

  @property
  def last_chunk_size(self):
    """How many of the last chunk's outputs are used (the rest is cut)."""
    return self.num_outputs - (self.num_chunks - 1) * self.chunk_size

  @nn.compact
  def __call__(self, tasks, live_rows=None, targets=None, hidden_only=False, pieces=None):
    """tasks: int [k] -> raw outputs [k, num_outputs]; all k * num_chunks rows in one batch.

    Every row is computed (the output regulariser sizes a chunked
    hypernetwork's rows by lax.switch, regularizers.py); live_rows only masks
    the squared distances. With targets, (outputs of tasks[0], squared
    distances), as `distances`. hidden_only: the output layer's inputs
    [k, num_chunks, hidden[-1]] instead (for `chunked_distances`).
    pieces (sizes, for one task, k = 1): its outputs cut into consecutive
    pieces of these sizes, a tuple (`chunk_dense_pieces`; `Layout.sizes`).
    """
    embeddings = self.param('embeddings', nn.initializers.normal(1.0),
                            (self.max_tasks, self.embedding_size))
    chunks = self.param('chunk_embeddings', nn.initializers.normal(1.0),
                        (self.num_chunks, self.chunk_embedding_size))
    task_emb = jnp.take(embeddings, tasks, axis=0)
    k, n = task_emb.shape[0], self.num_chunks
    x = jnp.concatenate([jnp.broadcast_to(chunks, (k, n, chunks.shape[1])),
                         jnp.broadcast_to(task_emb[:, None], (k, n, task_emb.shape[1]))], -1)
    out = _hidden(x, self.hidden, self.activation, self.weight_init)
    if hidden_only:
      return out
    if pieces is not None:
      if k != 1 or sum(pieces) > self.num_outputs:
        raise ValueError(f'pieces: one task\'s {self.num_outputs} outputs at most, got '
                         f'{sum(pieces)} for {k} tasks')
      return ChunkDense(self.chunk_size, self.weight_init, name='out')(out, pieces)
    out = ChunkDense(self.chunk_size, self.weight_init, name='out')(out)
    out = out.reshape(k, n * self.chunk_size)[:, :self.num_outputs]
    return out if targets is None else distances(out, live_rows, *targets)


def distances(out, live_rows, table, target_rows):
  """(out[0], squared distances of out[1:] to table[target_rows], 0 from row live_rows on).

  What a hypernetwork called with targets returns: HMLP computes the same in
  its output layer (`wide_dense.wide_dense_distances`), over the live rows only.
  """
  live = jnp.arange(1, out.shape[0]) < (out.shape[0] if live_rows is None else live_rows)
  diff = jnp.where(live[:, None], out[1:] - table[target_rows], 0.0)
  return out[0], jnp.sum(jnp.square(diff), 1)


def chunked_distances(hidden, out, hidden0, out0, last_chunk_size):
  """Squared distances [k] of a chunked hypernetwork's outputs to those of a snapshot.

  hidden, hidden0 [k, n, h]: the output layer's inputs for k tasks' n chunks
  (ChunkedHMLP with hidden_only) under the params and under the snapshot;
  out, out0: the output layer's params ({'kernel' [h, m], 'bias' [m]}).
  Distance i: sum over chunks c of ||y_ic - y0_ic||^2 over the chunk's used
  outputs (the last chunk's first last_chunk_size), y = hidden @ kernel +
  bias: the output regulariser's distances to targets made by the snapshot
  (HNET's targets are the hypernetwork's outputs at the task's start).

  For many rows they come from Gram matrices, without the outputs. Written
  as y - y0 = d K + u0 D, with u = [hidden, 1], K = [kernel; bias], d = u -
  u0 and D = K - K0, the distance is d (K K^T) d + 2 d (K D^T) u0 +
  u0 (D D^T) u0: three [h + 1, h + 1] Gram matrices over the m outputs (and
  three over the last chunk's), then products over the k * n rows. Each term
  is of second order in the small d and D, so no large terms cancel. Counting
  the forward and backward passes, that is about 9 (m + last) (h + 1)^2 +
  9 k n (h + 1)^2 multiply-adds against 4 k n (h + 1) m for the outputs
  themselves (the current ones forward and backward, the snapshot's forward):
  published HNET Permuted MNIST-100 at task 100 (36,828 rows, h = 350,
  m = 7500) 144 GFLOP per step against 627. With fewer rows the outputs are
  the cheaper (up to 3 of its old tasks there, 2 on HNET Permuted MNIST), and
  they are computed. Both forms equal the direct sums to float rounding
  (tests/test_hypernet.py).
  """
  k, n, h = hidden.shape
  m = out['kernel'].shape[1]
  if 4 * k * n * (h + 1) * m < 9 * (m + last_chunk_size + k * n) * (h + 1) ** 2:
    outputs = lambda hidden, out: chunk_dense(hidden.reshape(k * n, h), out['kernel'],
                                              out['bias']).reshape(k, n, m)
    square = jnp.square(outputs(hidden, out) - outputs(hidden0, out0))
    return jnp.sum(square[:, :-1], (1, 2)) + jnp.sum(square[:, -1, :last_chunk_size], 1)
  with_one = lambda h: jnp.concatenate([h, jnp.ones((*h.shape[:-1], 1), h.dtype)], -1)
  u, u0 = with_one(hidden), with_one(hidden0)
  kernel = jnp.concatenate([out['kernel'], out['bias'][None]])  # [h + 1, m]
  diff = kernel - jnp.concatenate([out0['kernel'], out0['bias'][None]])
  d = u - u0

  def per_chunk(kernel, diff, d, u0):
    gram = lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))
    quad = lambda x, g, y: jnp.sum((x @ g) * y, -1)
    return (quad(d, gram(kernel, kernel), d) + 2.0 * quad(d, gram(kernel, diff), u0)
            + quad(u0, gram(diff, diff), u0))

  full = per_chunk(kernel, diff, d[:, :-1], u0[:, :-1])  # [k, n - 1]
  last = per_chunk(kernel[:, :last_chunk_size], diff[:, :last_chunk_size], d[:, -1], u0[:, -1])
  return jnp.sum(full, 1) + last


def chunk_fan_in(config):
  """The fan-in of a chunked hypernetwork's output layer (ChunkDense), None for a full one."""
  if config.get('chunk_size', 0) <= 0:
    return None
  hidden = tuple(config.hnet_hidden)
  return hidden[-1] if hidden else config.chunk_embedding_size + config.embedding_size


def build(config, num_outputs):
  """The hypernetwork a config asks for: chunked when config.chunk_size > 0."""
  common = dict(num_outputs=num_outputs, max_tasks=config.max_tasks,
                embedding_size=config.embedding_size, hidden=tuple(config.hnet_hidden),
                activation=config.hnet_activation, weight_init=config.hnet_init)
  if config.chunk_size > 0:
    return ChunkedHMLP(chunk_size=config.chunk_size,
                       chunk_embedding_size=config.chunk_embedding_size, **common)
  return HMLP(**common)
