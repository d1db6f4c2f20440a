"""Atomic outputs: every file is written to a temporary sibling and renamed into place,
and a run's folder appears only when the run is complete.

A crash or a failed run therefore never leaves a half-written file behind and never
destroys an earlier result. A file gets the mode a plain ``open`` would give it (0666 less
the umask), not the temporary file's private 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ..console import is_main_process
from ..errors import NampruneError
from .records import METRICS, TRAIN_STATE


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's private 0600 would survive the rename
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def staging_dir(out: str | os.PathLike) -> Path:
    """Where a run writes until it completes: ``OUT.partial`` beside ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def train_resume_command(out: str | os.PathLike) -> str:
    """The command that continues the interrupted training run whose output folder is ``out``."""
    return f"namprune train --resume {shlex.quote(str(out))}"


def finished_epochs(stage: str | os.PathLike) -> int:
    """The epochs an interrupted run finished in its staging folder ``stage``, when it left
    the training state to continue from (0 otherwise). Read without torch: one row of
    metrics.jsonl per finished epoch."""
    stage = Path(stage)
    if not (stage / TRAIN_STATE).is_file() or not (stage / METRICS).is_file():
        return 0
    return sum(1 for line in (stage / METRICS).read_text(errors="replace").splitlines() if line.strip())


def check_out_dir(out: str | os.PathLike, overwrite: bool = False,
                  resume: str = "the same command and --resume") -> None:
    """Refuse to start a run whose output folder already holds a result, or whose staging
    folder holds finished epochs of an interrupted run (``resume`` says how to continue it)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise NampruneError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise NampruneError(f"{out} exists and is not a folder")
    epochs = finished_epochs(staging_dir(out))
    if epochs and not overwrite:
        raise NampruneError(f"{staging_dir(out)} holds {epochs} finished epoch(s) of an interrupted run: continue it "
                            f"with {resume}, or pass --overwrite to discard them and start again")


@contextlib.contextmanager
def run_dir(out: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Yield the staging folder for a run that will become ``out`` when it succeeds.

    With ``resume`` an interrupted run's staging folder is reused; otherwise a stale one
    is cleared, which ``check_out_dir`` allows only when it holds no finished epoch or
    ``overwrite`` says to discard them. On success an existing ``out`` (allowed by
    ``overwrite``) is swapped out and removed only after the new result is in place; on
    failure ``out`` is untouched.
    Under torchrun only rank 0 creates and commits the folder; the other ranks get its
    path and must not write (the training loop and the stages write on rank 0 only).
    """
    out = Path(out)
    if not resume:
        check_out_dir(out, overwrite)
    stage = staging_dir(out)
    if not is_main_process():
        yield stage
        return
    if stage.exists() and not resume:
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    yield stage
    commit_dir(stage, out)


def commit_dir(stage: Path, out: Path) -> None:
    """Move a finished staging folder to its final name, replacing an older result. The
    records in it are repointed first, so none names the staging folder that is gone."""
    repoint_records(stage, out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def repoint_records(stage: Path, out: Path) -> None:
    """Rewrite the paths under ``stage`` in every JSON record below it to the same paths under
    ``out`` (as given and as absolute paths), atomically, file by file."""
    stage, out = Path(stage), Path(out)
    moves = [(str(stage), str(out)), (str(stage.resolve()), str(stage.resolve().with_name(out.name)))]
    for record in stage.rglob("*.json"):
        try:
            original = read_json(record)
        except (OSError, ValueError):  # not a record of ours
            continue
        moved = _moved(original, moves)
        if moved != original:
            write_json(record, moved)


def _moved(value, moves: list[tuple[str, str]]):
    if isinstance(value, str):
        for old, new in moves:
            if value == old or value.startswith(old + os.sep):
                return new + value[len(old):]
        return value
    if isinstance(value, list):
        return [_moved(v, moves) for v in value]
    if isinstance(value, dict):
        return {k: _moved(v, moves) for k, v in value.items()}
    return value
