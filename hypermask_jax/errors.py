"""The one family of errors for bad input: the CLI prints the message as one line and exits 2.

Every check that can refuse a run (a config field, the workdir, the dataset)
raises a subclass of BadInput whose message names the field or path and what
is allowed. Anything else that goes wrong is a bug and keeps its traceback.
"""

EXIT_BAD_INPUT = 2


class BadInput(Exception):
  """Input the library cannot run with; str(error) is one line for the user."""

  def __init__(self, message):
    super().__init__(' '.join(str(message).split()))  # one line, whatever the caller built
