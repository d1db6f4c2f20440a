"""The one exception family namprune raises on purpose: ``NampruneError`` for mistakes a user
can make (bad flags, bad files, bad data), and its subclasses for runs that stop through no
mistake of the user's (``Interrupted``; training's ``Divergence``; ``deploy.onnx.ExportError``).

Every command turns any of them into a single line on stderr and the error's ``exit_code``
(2 for a user's mistake, 1 for a failed run, 130 for Ctrl-C); Python callers can catch the
family as a ``ValueError``.
"""


def first_line(exc: BaseException, limit: int = 200, prefer: tuple[str, ...] = ()) -> str:
    """An exception in one short line, for a one-line error (exporters, onnxruntime, torch and
    YAML raise pages): its first line holding one of ``prefer``, else its first line, else its
    type's name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    preferred = next((line for line in lines if any(word in line for word in prefer)), None)
    return (preferred or (lines[0] if lines else type(exc).__name__))[:limit]


class NampruneError(ValueError):
    """A problem with the user's input, reported in one line without a traceback."""

    exit_code = 2  # the CLI's exit status for this error


class Interrupted(NampruneError):
    """The user stopped a run (Ctrl-C); the message says what was kept and how to continue."""

    exit_code = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
