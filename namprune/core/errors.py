"""The one exception type for mistakes a user can make (bad flags, bad files, bad data).

The CLI turns it into a single line on stderr and exit code 2; Python callers can catch
it as a ``ValueError``.
"""


class NampruneError(ValueError):
    """A problem with the user's input, reported in one line without a traceback."""

    exit_code = 2  # the CLI's exit status for this error


class Interrupted(NampruneError):
    """The user stopped a run (Ctrl-C); the message says what was kept and how to continue."""

    exit_code = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
