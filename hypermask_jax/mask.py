"""HyperMask's semi-binary masks: hypernetwork outputs -> per-tensor masks over the target params."""

from flax import traverse_util
import jax
import jax.numpy as jnp

from hypermask_jax import layout as layout_lib


def kth_smallest(a, ks):
  """The ks-th smallest (0-based, int [m]) values of the non-negative float32 array a.

  Bisection over float bit patterns (monotone for a >= 0): 32 counting passes
  instead of a sort, which on CPU is ~10x faster for the sizes masks have.
  """
  bits = jax.lax.bitcast_convert_type(a.ravel().astype(jnp.float32), jnp.int32)

  def halve(_, bounds):  # invariant: count(bits <= lo) <= k < count(bits <= hi)
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits[None, :] <= mid[:, None], axis=1) > ks
    return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

  start = (jnp.full(ks.shape, -1, jnp.int32), jnp.full(ks.shape, 0x7F800000, jnp.int32))
  _, hi = jax.lax.fori_loop(0, 32, halve, start)
  return jax.lax.bitcast_convert_type(hi, jnp.float32)


def percentile(a, q):
  """jnp.percentile(a, q) (linear interpolation) for non-negative a, without sorting."""
  pos = q / 100.0 * (a.size - 1)
  k = jnp.floor(pos).astype(jnp.int32)
  low, high = kth_smallest(a, jnp.stack([k, jnp.minimum(k + 1, a.size - 1)]))
  return low + (pos - k) * (high - low)


def semi_binary(h, sparsity, sparse):
  """|tanh(h)|, zeroed below the tensor's `sparsity`-th percentile when `sparse` (ties kept)."""
  a = jnp.abs(jnp.tanh(h))
  if not sparse:
    return a
  tau = jax.lax.stop_gradient(percentile(a, sparsity))
  return jnp.where(a >= tau, a, 0.0)


def masks_from_output(layout, target_params, flat_output, sparsity, sparse):
  """The mask pytree, shaped like target_params; leaves the layout leaves out are the scalar 1.

  The output bias's mask (it only weights that bias's L1 drift) is |tanh(h)|
  without the sparsity cut, as in the reference.
  """
  pieces = layout.split(flat_output)
  flat = traverse_util.flatten_dict(target_params)
  return traverse_util.unflatten_dict({
      p: semi_binary(pieces[p], sparsity, sparse and not layout_lib.is_output_bias(p))
      if p in pieces else jnp.ones((), w.dtype) for p, w in flat.items()})


def apply_masks(target_params, masks, select):
  """W * M on the tensors `select` picks (by path); the other leaves unchanged."""
  flat, flat_masks = traverse_util.flatten_dict(target_params), traverse_util.flatten_dict(masks)
  return traverse_util.unflatten_dict(
      {p: w * flat_masks[p] if select(p) else w for p, w in flat.items()})


def sparsity_at(sparsity, task, step, steps_per_task):
  """Adaptive sparsity: ramps s*(i+1)/N over task 0's N steps, then stays at s."""
  ramp = sparsity * (step + 1) / steps_per_task
  return jnp.where(task == 0, ramp, sparsity)
