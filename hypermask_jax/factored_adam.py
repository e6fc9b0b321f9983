"""Adam in one pass over a large parameter, on CPU: a kernel whose gradient is a few outer
products (FactoredGradient), and any large leaf with an array gradient (dense_update).

The full hypernetwork's output kernel (wide_dense.py) is HyperMask's largest
array: 204M floats in the published Permuted MNIST config. Its gradient is
ct^T @ x, the sum of k outer products of the output cotangent's rows ct
[k, m] and the layer's input rows x [k, n] (the current task and the k - 1
regularised previous ones). XLA:CPU fuses that sum into Adam's update
(optax.adam, then optax.apply_updates), but it makes no fusion with several
outputs: the new first moment, second moment and kernel are three loops,
which read and write 8 arrays of the kernel's size, and the first two each
sum all k rows, the rows not yet in use (x's zero rows) included. Here the
update is one loop in C++ (cpu_kernels.cc, an XLA FFI custom call) that
reads the kernel and both moments once and writes them once, in place (6
arrays), and sums only the rows in use. XLA has no such fusion and optax no
such update: that is why it is written by hand. On GPU and TPU XLA makes the
one loop itself, so the kernel is for CPU only.

The same pass also computes the layer's input gradient d_x = ct @ kernel
(the live rows; the kernel as it was before the update), which XLA computes
with a product of its own: one more read of the kernel (48-61 ms of the
published Permuted MNIST step on the Intel Xeon below). The hidden layers
before the output layer then get their gradients from d_x
(FactoredGradient.backprop) before optax updates them. With one row in use
(a task without old tasks to regularise, the first) the row's terms are
added in the update's loop; with more, the kernel's rows are taken 8 at a
time, and the gradient's and d_x's sums over them run in vector registers
(AVX-512's 16 floats, AVX2's 8, or 1 without either, as the compiler's
target allows: written with the vector instructions, since GCC's vector
types leave out the fused multiply-adds the update's numbers need, and
libstdc++'s std::experimental::simd ran them one float at a time, 4x
slower).

Measured on a 2-core Intel Xeon (Emerald Rapids). The update alone, at the
Permuted MNIST size (m = 2,036,010, n = 100, k = 10; fastest of 8 calls):
126 ms against XLA's 210-246 ms with one row in use, 184-222 against
202-237 ms with all ten. In the published steps (`experiments/compare_checkouts.py
--before=. --before_env=HYPERMASK_FACTORED_ADAM=xla`, medians of the
alternating calls, XLA -> this): Permuted MNIST 346 -> 256 ms at task 1 and
444 -> 396 ms at task 10, Split MNIST 33.8 -> 26.9 ms at task 1 and 39.0 ->
37.6 ms at task 5, ZenkeNet 284 -> 235 ms and ResNet-20 571 -> 519 ms at
task 1. The parameters came out the same to the bit in all of them.
With the input gradient in the same pass, the kernel alone took 125-132 ms
with one row and 196-234 ms with ten, and the steps went (medians, the
update alone and XLA's product -> both here): Permuted MNIST 343 -> 266 ms
at task 1 and 403 -> 353 ms at task 10, Split MNIST 27.7 -> 24.8 ms at task
1 and 43.1 -> 30.6 ms at task 5, ZenkeNet 275 -> 221 ms at task 1 and 467
-> 384 ms at task 10, ResNet-20 549 -> 499 ms at task 1
(docs/benchmark_history.md).

How it is used: with `factored=True` HyperMask.gradients gives the kernel's
and its input's gradients as a FactoredGradient (the output cotangent's
factors, x, live, backprop) instead of arrays, and `apply` updates that leaf
with the kernel, then every other with optax, their gradients completed by
backprop(d_x). The kernel
computes optax's expressions in XLA's order, its multiply-adds fused as
XLA:CPU's compiler fuses them, so that the update is optax's for a given
gradient: to the bit with one row in use (tests/test_factored_adam.py), and
within the sum's last bit with more. d_x is summed over the kernel's rows in
another order than XLA's product (in blocks of rows, then over the blocks in
order, the same whichever thread runs a block), so the hidden layers'
gradients differ from the XLA path's by float rounding (at the Permuted
MNIST size, d_x was within 1.9e-6 of the float64 sum relative to its
largest entry, XLA's product within 6.5e-5 with one row and 1.6e-6 with
more). Adam turns a rounding difference in a gradient near 0 into a step of
about the learning rate either way, so parameters differ by more after
steps: the tests compare the gradients themselves.

Leaves with an array gradient of at least DENSE_MIN_SIZE entries (HNET's
chunk layer kernel, 1.95M floats in the published Permuted MNIST config, and
the target network's large kernels) get the same update from DenseAdam
(`dense_update`): one pass that reads the gradient, the leaf and its moments
and writes them in place, where XLA:CPU makes three loops. Its moments are
optax's to the bit; XLA rounds p - lr * step in some entries without fusing
the product (0.1% of them in the tests), so p is within that rounding. In
the published HNET Permuted MNIST step at task 1 (compare_checkouts.py with
--before_env=HYPERMASK_FACTORED_ADAM=xla, which turns it off there) the
step went from 13.53 to 13.36 ms (medians; fastest 13.12 -> 12.42), the
parameters the same to the bit after 220 steps; HNET Permuted MNIST-100's
(its chunk kernel 2.6M floats) from 37.92 to 35.33 ms at task 1 against the
commit before, the parameters the same to the bit after 140 steps.

The kernels are built on first use (cpu_kernels.py). Where they cannot be
(no compiler, say), backend.factored_adam chooses optax's update with a
warning.
"""

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypermask_jax import cpu_kernels

TARGET = cpu_kernels.TARGETS['FactoredAdam']
B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults, which trainer.optimizer uses
DENSE_MIN_SIZE = 2 ** 18  # the smallest array leaf `apply` gives DenseAdam


@flax.struct.dataclass
class FactoredGradient:
  """The gradients of a layer y = x @ kernel^T + b, kernel [m, n], from its output rows'
  cotangent ct [k, m] and its input rows x [k, n], of which the first `live` are in use.

  ct is given as factors, as the output regulariser forms it
  (wide_dense.wide_dense_distances): its row 0 is ct0 [m], its row r >= 1
  ct_scale[r - 1] * ct_rows[r - 1] (ct_rows [k - 1, m]), so that it is never
  built as a [k, m] array. The kernel's gradient is ct^T @ x over the live
  rows; the input's is d_x = ct @ kernel over the live rows (0 for the others),
  with the kernel before the update. backprop(d_x) is what d_x gives the
  other parameters (x's own layers), a tree of some of their paths, to be
  added to their gradients.
  """
  ct0: jax.Array
  ct_rows: jax.Array
  ct_scale: jax.Array
  x: jax.Array
  live: jax.Array  # int32 scalar
  backprop: jax.tree_util.Partial

  def ct(self):
    """The cotangent [k, m] the factors stand for."""
    return jnp.concatenate([self.ct0[None], self.ct_scale[:, None] * self.ct_rows])


def _scalars(learning_rate, count):
  """(-lr, 1 / (1 - b1^t), 1 / (1 - b2^t)) for the step after `count`, as XLA computes them."""
  count = optax.safe_increment(count)
  return jnp.stack([-learning_rate, 1 / (1 - B1 ** count).astype(jnp.float32),
                    1 / (1 - B2 ** count).astype(jnp.float32)]).astype(jnp.float32)


_ATTRIBUTES = dict(b1=np.float32(B1), one_minus_b1=np.float32(1 - B1), b2=np.float32(B2),
                   one_minus_b2=np.float32(1 - B2), eps=np.float32(EPS))


def update(grad, p, mu, nu, learning_rate, count):
  """(p', mu', nu', d_x) for a FactoredGradient leaf; count is the Adam count before this step."""
  cpu_kernels.library()  # registers the kernel with XLA
  call = jax.ffi.ffi_call(TARGET, (*(jax.ShapeDtypeStruct(p.shape, p.dtype),) * 3,
                                   jax.ShapeDtypeStruct(grad.x.shape, grad.x.dtype)),
                          input_output_aliases={6: 0, 7: 1, 8: 2}, vmap_method='broadcast_all')
  return call(grad.ct0, grad.ct_rows, grad.ct_scale, grad.x, jnp.asarray(grad.live, jnp.int32),
              _scalars(learning_rate, count), p, mu, nu, **_ATTRIBUTES)


def dense_update(grad, p, mu, nu, learning_rate, count):
  """(p', mu', nu') for a leaf with an array gradient, by DenseAdam in one pass in place, where
  XLA makes three loops: optax.adam's update and optax.apply_updates, the moments to the bit and
  p within the rounding of its last multiply-add (see above)."""
  cpu_kernels.library()  # registers the kernel with XLA
  call = jax.ffi.ffi_call(cpu_kernels.TARGETS['DenseAdam'],
                          (jax.ShapeDtypeStruct(p.shape, p.dtype),) * 3,
                          input_output_aliases={2: 0, 3: 1, 4: 2}, vmap_method='broadcast_all')
  return call(grad, _scalars(learning_rate, count), p, mu, nu, **_ATTRIBUTES)


def flops(m, n, live):
  """The kernel's floating-point operations for a [m, n] kernel with `live` rows in use, a
  multiply-add counted as 2: the gradient's sum (2 live - 1 per entry), d_x's (2 live) and Adam's
  update (14). For benchmark_step.py's compute floor: XLA's cost analysis counts nothing for a
  custom call."""
  return m * n * (4 * live - 1 + 14)


def _is_factored(x):
  return isinstance(x, FactoredGradient)


def apply(tx, learning_rate, grads, opt_state, params, kernels=False):
  """(params, opt_state) after one step of tx, optax.adam(learning_rate) (trainer.optimizer).

  grads has params' structure, a FactoredGradient in place of an array where
  the method gives one; those leaves are updated by the kernel (with optax's
  default b1, b2 and eps, as tx), the others by tx. With `kernels`, so are
  the leaves of at least DENSE_MIN_SIZE entries (dense_update). Without such
  leaves this is exactly tx.update and optax.apply_updates.
  """
  def by_kernel(g):
    return _is_factored(g) or (kernels and g is not None and g.dtype == jnp.float32
                               and g.size >= DENSE_MIN_SIZE)
  paths = [path for path, g in jax.tree_util.tree_leaves_with_path(grads, is_leaf=_is_factored)
           if by_kernel(g)]
  if not paths:
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  adam, rest = opt_state[0], opt_state[1:]
  assert isinstance(adam, optax.ScaleByAdamState), type(adam)

  def split(tree):  # (the tree with the kernel's leaves set to None, those leaves)
    picked = {}

    def pick(path, leaf):
      if path in paths:
        picked[path] = leaf
        return None
      return leaf
    return jax.tree_util.tree_map_with_path(pick, tree, is_leaf=_is_factored), picked

  (grads_rest, picked_grads), (params_rest, picked_params) = split(grads), split(params)
  (mu_rest, picked_mu), (nu_rest, picked_nu) = split(adam.mu), split(adam.nu)
  new = {path: (update if _is_factored(picked_grads[path]) else dense_update)(
      picked_grads[path], picked_params[path], picked_mu[path], picked_nu[path], learning_rate,
      adam.count) for path in paths}
  for path in paths:  # what each factored layer's input gradient gives the layers before it
    if _is_factored(picked_grads[path]):
      grads_rest = _add(grads_rest, picked_grads[path].backprop(new[path][3]))
  updates, (new_adam, *new_rest) = tx.update(
      grads_rest, (adam._replace(mu=mu_rest, nu=nu_rest), *rest), params_rest)
  params_rest = optax.apply_updates(params_rest, updates)

  def join(tree, index):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: new[path][index] if path in new else leaf, tree,
        is_leaf=lambda x: x is None)
  new_adam = new_adam._replace(mu=join(new_adam.mu, 1), nu=join(new_adam.nu, 2))
  return join(params_rest, 0), (new_adam, *new_rest)


def _add(tree, extra):
  """tree (nested dicts) with the leaves of extra, a tree of some of its paths, added."""
  flat = traverse_util.flatten_dict(tree, keep_empty_nodes=True)
  for path, leaf in traverse_util.flatten_dict(extra).items():
    flat[path] = flat[path] + leaf
  return traverse_util.unflatten_dict(flat)
