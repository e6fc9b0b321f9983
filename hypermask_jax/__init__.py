"""hypermask_jax: continual learning with hypernetworks (HyperMask, HNET) in JAX/Flax."""

__version__ = '0.3.0'
