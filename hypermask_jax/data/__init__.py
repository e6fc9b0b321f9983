"""Data: TFDS loading, the offline importer, and on-device continual-learning task sets."""
