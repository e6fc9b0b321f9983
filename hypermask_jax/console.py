"""What the console shows: progress lines and warnings, not the libraries' INFO logs.

absl prints every INFO record to stderr, and orbax, TFDS and JAX log many
(each checkpoint save writes about 60 lines, JAX one per backend it does not
find), which would bury a run's progress lines and a script's table.
`quiet_libraries` drops those libraries' records below WARNING; their
warnings, and every record of this project's own, still print.
"""

import logging

from absl import logging as absl_logging

CHATTY_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/')


class _QuietLibraries(logging.Filter):

  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(
        lib in record.pathname for lib in CHATTY_LIBRARIES)


def quiet_libraries():
  """Drops CHATTY_LIBRARIES' INFO records from absl's console handler (once per process)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
