"""Where a benchmark script leaves what it measured: the markdown it prints, and both files
under benchmarks/results/."""

from __future__ import annotations

from pathlib import Path

from namprune.core.store.files import write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, text: str, record: dict) -> None:
    """Print ``text`` and write ``results/<name>.md`` and ``results/<name>.json``."""
    print(text)
    write_json(RESULTS / f"{name}.json", record)
    write_text(RESULTS / f"{name}.md", text)
