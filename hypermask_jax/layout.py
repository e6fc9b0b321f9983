"""Where each generated target tensor lives in a hypernetwork's flat output.

Tensors are selected by their path in the params pytree, never by flatten
position (Flax sorts keys: 'dense_10' comes before 'dense_2').

The flat output is laid out as PyTorch lays out the same network (the order
hypnettorch's targets list their parameters, which the reference
hypernetworks fill): layers in the order the network runs them, a layer's
weight before its bias, and each tensor in PyTorch's shape ([out, in] for a
Dense layer's weight, [out, in, kh, kw] for a conv kernel), row-major. The
targets' Dense layers store their 'weight' in that shape already
(`layers.Linear`); only a conv kernel is reordered, to Flax's HWIO. For a full
hypernetwork the order is immaterial (its output rows are exchangeable), but a
chunked one ignores layer boundaries: with this layout, the same hypernetwork
weights generate the same target weights as in the reference, chunk for
chunk (checked by experiments/parity_torch.py).
"""

import dataclasses
import re

from flax import traverse_util
import jax.numpy as jnp
import numpy as np

HEAD = 'head'
NORM_PREFIXES = ('BatchNorm', 'LayerNorm', 'GroupNorm', 'norm', 'bn')


def is_weight(path):
  """What hypernetworks make: the target's weights, kernels and biases, not normalisation's."""
  return (path[-1] in ('weight', 'kernel', 'bias')
          and not any(p.startswith(NORM_PREFIXES) for p in path[:-1]))


def is_output_bias(path):
  return path[-2:] == (HEAD, 'bias')


def is_masked(path):
  """The weights HyperMask's masks multiply in the forward pass: all but the output layer's bias."""
  return is_weight(path) and not is_output_bias(path)


def network_order(path):
  """Sort key: the order the targets (targets.py) run their layers, the head last, bias last.

  Layer names compare with their numbers as numbers ('dense_2' < 'dense_10');
  'conv_stem' < 'stage0_block0' < ... and 'conv0_0' < 'conv1_1' < 'dense'
  follow the networks' definitions.
  """
  natural = tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name))
                  for name in path[:-1])
  return (path[:-1][:1] == (HEAD,), natural, path[-1] == 'bias')


def torch_layout(shape):
  """(the tensor's shape in PyTorch, the axes that turn that into Flax's shape).

  Only a conv kernel differs; a Dense layer's weight is stored as PyTorch's.
  """
  if len(shape) == 4:  # conv: Flax HWIO, PyTorch OIHW
    return (shape[3], shape[2], shape[0], shape[1]), (2, 3, 1, 0)
  return tuple(shape), tuple(range(len(shape)))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The (path, Flax shape) of each selected tensor, in the order they fill the flat output."""
  paths: tuple
  shapes: tuple

  @classmethod
  def of(cls, target_params, select):
    flat = traverse_util.flatten_dict(target_params)
    paths = tuple(sorted((p for p in flat if select(p)), key=network_order))
    return cls(paths, tuple(tuple(flat[p].shape) for p in paths))

  @property
  def size(self):
    return int(sum(np.prod(s) for s in self.shapes))

  @property
  def torch_shapes(self):
    """The shapes in PyTorch's layout, in flat-output order (hypnettorch's `target_shapes`)."""
    return tuple(torch_layout(s)[0] for s in self.shapes)

  @property
  def sizes(self):
    """Each tensor's number of entries, in flat-output order."""
    return tuple(int(np.prod(s)) for s in self.shapes)

  def split(self, flat_output):
    """Cuts a flat [P] vector into {path: tensor} with the target's (Flax) shapes.

    Entries past P (a chunked hypernetwork's whole chunks) are left out.
    """
    return self.assemble(jnp.split(flat_output, np.cumsum(self.sizes))[:len(self.sizes)])

  def assemble(self, pieces):
    """{path: tensor} with the target's (Flax) shapes from the flat output's consecutive pieces
    (1-D, of `sizes`; hypernet.chunk_dense_pieces makes them without the flat vector)."""
    out = {}
    for path, piece, shape in zip(self.paths, pieces, self.shapes):
      torch_shape, axes = torch_layout(shape)
      out[path] = jnp.transpose(piece.reshape(torch_shape), axes)
    return out

  def unflatten(self, tensors, rest=None):
    """{path: tensor} (`split`, `assemble`) as a params pytree, plus the leaves of `rest` that the
    layout leaves out."""
    rest = traverse_util.flatten_dict(rest) if rest else {}
    return traverse_util.unflatten_dict({**rest, **tensors})
