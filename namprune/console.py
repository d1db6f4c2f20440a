"""Where output goes: results (tables, summaries) to stdout, progress and notes to stderr.

Only the process of rank 0 prints when training runs under torchrun.
"""

import os

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def note(message: str) -> None:
    if is_main_process():
        err_console.print(message)
