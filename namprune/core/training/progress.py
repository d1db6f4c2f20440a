"""What a user sees while training runs: the progress bar of an epoch, one line per epoch, and
a word when an epoch ran far slower than the first because other jobs took the cores.
"""

from __future__ import annotations

import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..console import err_console, note
from ..deploy.cpus import available_cores


def progress_bar(enabled: bool) -> Progress:
    # In a log file or a pipe a bar cannot redraw; the one line per epoch says enough there.
    enabled = enabled and (err_console.is_terminal or err_console.is_jupyter)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1f}%  {task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(), console=err_console, transient=True, disable=not enabled,
    )


def report_epoch(row: dict, epochs: int, stage: str) -> None:
    tested = "" if row["test_top1"] is None else f"test top-1 {row['test_top1']:.2f}%  top-5 {row['test_top5']:.2f}%  "
    note(f"{stage} epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  train {row['train_top1']:.2f}%  "
         f"{tested}{row['images_per_s']:.0f} img/s")


SLOW_EPOCH = 1 / 3  # of the first epoch's images/s: slower than this on a busy machine is worth a word


def note_if_starved(history: list[dict], threads: int) -> bool:
    """Say once why an epoch ran far slower than the first, when the machine is busy: other
    jobs are taking the cores training's threads wait for. True when it was said."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    message = starved_message(history[-1]["epoch"], history[-1]["images_per_s"], history[0]["images_per_s"], load,
                              available_cores(), threads)
    if message:
        note(f"[yellow]note:[/] {message}")
    return message is not None


def starved_message(epoch: int, speed: float, first_speed: float, load: float | None, cores: int,
                    threads: int) -> str | None:
    """What to tell a user whose epoch ``epoch`` trained at ``speed`` images/s against the first
    epoch's ``first_speed`` while the load average was ``load`` on ``cores`` usable cores;
    None when the epoch was not slow or the machine was not busy."""
    if load is None or load <= cores or speed >= first_speed * SLOW_EPOCH:
        return None
    busy = (f"epoch {epoch} trained at {speed:.0f} images/s, under a third of the first epoch's {first_speed:.0f}, "
            f"while other jobs keep the machine busy (load {load:.1f} on {cores} usable core(s))")
    if threads > 1:
        return (f"{busy}: training's {threads} threads wait for each other; run it with --threads 1 "
                "(or OMP_NUM_THREADS=1)")
    return f"{busy}: it already trains on one thread; it speeds up when the other jobs end"
