"""The command line restarts itself once with glibc's huge pages, only where they help."""

import os
import subprocess
import sys

import pytest

from hypermask_jax import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('environ,version,mode,expected', [
    ({}, (2, 36), 'madvise', True),
    ({}, (2, 35), 'madvise', True),
    ({}, (2, 34), 'madvise', False),  # glibc.malloc.hugetlb came in 2.35
    ({}, None, 'madvise', False),  # not glibc (musl, macOS)
    ({}, (2, 36), 'always', False),  # every large mapping gets huge pages already
    ({}, (2, 36), 'never', False),
    ({}, (2, 36), None, False),  # no THP file
    ({'GLIBC_TUNABLES': ''}, (2, 36), 'madvise', False),  # the user's setting stands
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, (2, 36), 'madvise', False),
])
def test_restarts_only_where_it_helps_and_the_user_did_not_choose(environ, version, mode,
                                                                   expected):
  assert huge_pages.wanted(environ, version, mode) == expected


@pytest.mark.parametrize('user_setting', [None, ''])
def test_the_restarted_process_runs_the_same_command_with_the_tunable(user_setting):
  """The process re-executes its own command line (here `python -c CODE`) once, with the
  tunable set where this machine wants it; a setting of the user's, even empty, is kept."""
  code = ('import os; from hypermask_jax import huge_pages; print("start", flush=True); '
          'huge_pages.restart_with_huge_pages(); print(repr(os.environ.get("GLIBC_TUNABLES")))')
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  if user_setting is not None:
    env['GLIBC_TUNABLES'] = user_setting
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       env=env, check=True)
  restarts = huge_pages.wanted(env, huge_pages.glibc_version(), huge_pages.thp_mode())
  expected = repr(huge_pages.TUNABLE) if restarts else repr(user_setting)
  assert run.stdout.splitlines() == ['start'] * (2 if restarts else 1) + [expected]


def test_a_failed_restart_goes_on_without_the_tunable(monkeypatch):
  def fail(path, argv):
    raise FileNotFoundError(path)
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.setattr(huge_pages, 'wanted', lambda *args: True)
  monkeypatch.setattr(os, 'execv', fail)
  huge_pages.restart_with_huge_pages()
  assert 'GLIBC_TUNABLES' not in os.environ
