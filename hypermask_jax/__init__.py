"""hypermask_jax: continual learning with hypernetworks (HyperMask, HNET) in JAX/Flax."""
