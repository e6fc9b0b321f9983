"""Backend-dependent choices: defaults per backend, forced by environment variables."""

import jax
import pytest

from hypermask_jax import backend


def test_conv_defaults_to_im2col_on_cpu_and_xla_elsewhere(monkeypatch):
  monkeypatch.delenv('HYPERMASK_CONV', raising=False)
  assert backend.conv() == ('im2col' if jax.default_backend() == 'cpu' else 'xla')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.conv() == 'xla'


@pytest.mark.parametrize('value', ['im2col', 'xla'])
def test_conv_is_forced_by_the_environment(monkeypatch, value):
  monkeypatch.setenv('HYPERMASK_CONV', value)
  assert backend.conv() == value


def test_a_bad_value_names_the_variable_and_the_choices(monkeypatch):
  monkeypatch.setenv('HYPERMASK_CONV', 'cudnn')
  with pytest.raises(ValueError, match=r"HYPERMASK_CONV='cudnn'.*im2col.*xla"):
    backend.conv()
