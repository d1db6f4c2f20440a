"""The ``namprune`` command: the typer app and the error boundary (shared options: ``options.py``).

Commands only parse flags, call the library, and print. Errors a user can cause are
``NampruneError``s; ``main`` prints them as one line on stderr with exit code 2 (``--debug``
shows the traceback).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

import typer

try:  # typer >= 0.29 carries its own copy of click
    from typer._click.exceptions import NoSuchOption, UsageError
except ImportError:  # older typer runs on click itself
    from click.exceptions import NoSuchOption, UsageError

from ..core.errors import Interrupted, NampruneError, first_line
from ..core.store.files import finished_epochs, staging_dir
from ..core.store.records import TRAIN_STATE

app = typer.Typer(
    name="namprune",
    help="Train CNNs that shrink the channels a prune will remove (NAM attention optional), prune "
         "them structurally, fine-tune, measure and export. Add --debug anywhere to see tracebacks, and "
         "--accept-changed-model to rebuild a checkpoint's model from its model file although the file changed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def int_or_text(text: str | None) -> int | str | None:
    """An option that takes a number or a word (``--batch 8|dynamic``, ``--round-to 8|auto``):
    the number when it is one; the settings check what either may be."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return text


def fail(message: str, code: int = 2, label: str = "error") -> int:
    sys.stderr.write(f"{label}: {message}\n")
    sys.stderr.flush()
    return code


def interrupted(out: Path, resume: str) -> Interrupted:
    """What a Ctrl-C left of the run into ``out``, and ``resume``: how to continue it."""
    stage = staging_dir(out)
    epochs = finished_epochs(stage)
    if epochs:
        return Interrupted(f"{epochs} finished epoch(s) are saved in {stage}; continue with {resume}")
    if (stage / TRAIN_STATE).is_file():
        return Interrupted(f"before the first epoch finished; {stage} holds its starting point: "
                           f"{resume} starts it again")
    return Interrupted("before anything was saved")


def usage_error(exc: UsageError, args: list[str]) -> str:
    """A usage error in one line, naming the command whose help to read, and for an option
    that this command lacks, the commands that take it (``prune --ratios``: sweep takes it)."""
    group = typer.main.get_command(app)
    command = next((a for a in args if a in group.commands), None)  # the word typed, wherever the error arose
    message = exc.format_message()
    if isinstance(exc, NoSuchOption):
        others = [name for name, other in group.commands.items() if name != command
                  and any(exc.option_name in p.opts for p in other.params)]
        if others:
            takes = "takes" if len(others) == 1 else "take"
            message += f"; {' and '.join(f'`namprune {o}`' for o in others)} {takes} {exc.option_name}"
    return f"{message} (see `namprune{' ' + command if command else ''} --help`)"


def _accepting_changed_models(accept: bool):
    if not accept:  # torch is not imported for nothing: --help answers fast
        return contextlib.nullcontext()
    from ..core.models.foreign import accepting_changed_files
    return accepting_changed_files()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script (and of ``python -m namprune`` / ``python cli.py``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("NAMPRUNE_DEBUG"))
    # like --debug, taken by every command: a checkpoint's edited model file is rebuilt as it is now
    accept_changed = "--accept-changed-model" in args
    args = [a for a in args if a not in ("--debug", "--accept-changed-model")]
    from . import commands  # noqa: F401  (registers the commands)

    try:
        with _accepting_changed_models(accept_changed):
            result = app(args=args, prog_name="namprune", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        return fail(usage_error(exc, args))
    except Interrupted as exc:
        return fail(str(exc), exc.exit_code, "interrupted")
    except NampruneError as exc:
        if debug:
            traceback.print_exc()
        return fail(str(exc).replace("\n", " "), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        return fail("stopped by the user", 130, "interrupted")
    except Exception as exc:  # a bug, not a user error: say so briefly, traceback with --debug
        if debug:
            traceback.print_exc()
        return fail(f"internal error: {type(exc).__name__}: {first_line(exc)} "
                    "(run again with --debug for the traceback)", 1)
    finally:
        distributed = sys.modules.get("namprune.core.training.distributed")  # imported by whatever joined a process group
        if distributed:
            distributed.teardown()  # under torchrun: leave the process group cleanly, whatever happened
    return result if isinstance(result, int) else 0
