"""Paths given by the user: resolved once at start, so every later use agrees on them."""

import os


def is_remote(path):
  """Whether `path` names a remote store (gs://, s3://, ...) rather than a local folder."""
  return '://' in str(path)


def absolute(path):
  """A local path made absolute (with ~ expanded); a remote one as it is; '' stays ''."""
  path = str(path)
  if not path or is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))
