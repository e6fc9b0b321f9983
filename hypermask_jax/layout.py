"""Where each generated target tensor lives in a hypernetwork's flat output.

Tensors are selected by their path in the params pytree, never by flatten
position (Flax sorts keys: 'dense_10' comes before 'dense_2').
"""

import dataclasses

from flax import traverse_util
import jax.numpy as jnp
import numpy as np

HEAD = 'head'
NORM_PREFIXES = ('BatchNorm', 'LayerNorm', 'GroupNorm', 'norm', 'bn')


def is_weight(path):
  """Kernels and biases of the target, outside normalisation layers (what HNET generates)."""
  return path[-1] in ('kernel', 'bias') and not any(p.startswith(NORM_PREFIXES) for p in path[:-1])


def is_masked(path):
  """The weights HyperMask masks: all of them but the output layer's bias."""
  return is_weight(path) and path[-2:] != (HEAD, 'bias')


@dataclasses.dataclass(frozen=True)
class Layout:
  """The (path, shape) of each selected tensor, in the order they fill the flat output."""
  paths: tuple
  shapes: tuple

  @classmethod
  def of(cls, target_params, select):
    flat = traverse_util.flatten_dict(target_params)
    paths = tuple(p for p in flat if select(p))
    return cls(paths, tuple(tuple(flat[p].shape) for p in paths))

  @property
  def size(self):
    return int(sum(np.prod(s) for s in self.shapes))

  def split(self, flat_output):
    """Cuts a flat [P] vector into {path: tensor} with the target's shapes."""
    sizes = [int(np.prod(s)) for s in self.shapes]
    pieces = jnp.split(flat_output, np.cumsum(sizes)[:-1])
    return {p: x.reshape(s) for p, x, s in zip(self.paths, pieces, self.shapes)}

  def unflatten(self, flat_output, rest=None):
    """The flat vector as a params pytree, plus the leaves of `rest` that the layout leaves out."""
    rest = traverse_util.flatten_dict(rest) if rest else {}
    return traverse_util.unflatten_dict({**rest, **self.split(flat_output)})
