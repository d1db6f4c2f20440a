"""Where output goes: results (tables, summaries) to stdout, progress and notes to stderr.

Only the process of rank 0 prints when training runs under torchrun. When the output is
not a terminal (a log file, a pipe) tables are laid out 120 columns wide instead of 80,
so layer names are not cut.
"""

import os
import sys

from rich.console import Console


def _width(stream) -> int | None:
    return None if stream.isatty() or "COLUMNS" in os.environ else 120


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or the only process (torchrun sets RANK before Python starts)."""
    return int(os.environ.get("RANK", "0")) == 0


# The other ranks of a torchrun job are quiet: a job prints its results once.
console = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout), quiet=not is_main_process())
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr),
                      quiet=not is_main_process())


def note(message: str) -> None:
    if is_main_process():
        err_console.print(message)
