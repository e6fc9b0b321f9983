"""The one family of errors for bad input: the CLI prints the message as one line and exits 2.

Every check that can refuse a run (a config field, the workdir, the dataset)
raises a subclass of BadInput whose message names the field or path and what
is allowed. Anything else that goes wrong is a bug and keeps its traceback.
The scripts in experiments/ take the same path (`run_script`).
"""

import argparse
import re
import sys

from absl import app
from absl import flags

from hypermask_jax import console

EXIT_BAD_INPUT = 2
HELP_FLAGS = ('-h', '-help', '--help', '--helpshort', '--helpfull', '-?')


class BadInput(Exception):
  """Input the library cannot run with; str(error) is one line for the user."""

  def __init__(self, message):
    super().__init__(' '.join(str(message).split()))  # one line, whatever the caller built


def exit_bad_input(message):
  """The one exit for bad input: `error: message` as one line on stderr, exit status 2."""
  print(f'error: {BadInput(message)}', file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser for the commands that use it, a bad argument refused as every bad
  input is: one line, exit status 2 (argparse's own error prints its usage line first)."""

  def error(self, message):
    exit_bad_input(message)


def parse_flags(argv):
  """absl's flag parsing, a bad flag value leaving through exit_bad_input: the remaining args."""
  try:
    return flags.FLAGS(argv)
  except BadInput as e:  # a config file's own check
    exit_bad_input(e)
  except (flags.Error, ValueError, TypeError) as e:
    exit_bad_input(re.sub(r'^flag ', '', str(e).strip().splitlines()[0]))


def print_script_help():
  """A script's --help: its docstring and its flags, exit status 0 (absl's own exits 1)."""
  print((sys.modules['__main__'].__doc__ or '').strip(), end='\n\n')
  print(flags.FLAGS.main_module_help())
  sys.exit(0)


def run_script(main):
  """app.run(main) for a script: --help exits 0; a bad flag, BadInput or absl's UsageError
  exits 2, one line; the libraries' INFO logs are kept off the console (`console`). A script's
  --config and --config.FIELD flags are checked as the command line checks them."""
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    print_script_help()
  if 'config' in flags.FLAGS:
    from hypermask_jax import config_files  # pylint: disable=g-import-not-at-top  (it imports this)
    try:
      config_files.check_flags(sys.argv[1:], default=flags.FLAGS['config'].default, sweep=False)
    except BadInput as e:
      exit_bad_input(e)

  def checked_main(argv):
    console.quiet_libraries()
    try:
      return main(argv)
    except (BadInput, app.UsageError) as e:
      exit_bad_input(e)
  app.run(checked_main, flags_parser=parse_flags)
