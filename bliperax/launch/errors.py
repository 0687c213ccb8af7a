"""The one error the launcher raises: a refused launch, said in one line."""


class LaunchError(ValueError):
  """A launch that cannot be right as asked: the message says what and how to fix it.

  Raised before anything runs, so a refused launch leaves nothing behind; the command
  line prints it as one `error: ...` line (bliperax.cli.fail).
  """
