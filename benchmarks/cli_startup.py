"""How fast does the command line answer when it has nothing to compute? `namprune --help`,
`namprune prune --help` and a usage error (`namprune prune --ratios 0.3`), each run as a fresh
process, beside `python -c "import torch"` for scale, interleaved, median of the runs.

    python benchmarks/cli_startup.py [--runs 15]

Writes benchmarks/results/cli_startup.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import time

from _results import save

COMMANDS = {
    "namprune --help": [sys.executable, "-m", "namprune", "--help"],
    "namprune prune --help": [sys.executable, "-m", "namprune", "prune", "--help"],
    "namprune prune --ratios 0.3 (usage error)": [sys.executable, "-m", "namprune", "prune", "--ratios", "0.3"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file cache once
        wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    rows = ["| command | median (s) | lowest | highest |", "|---|---:|---:|---:|"]
    rows += [f"| `{name}` | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |" for name, t in times.items()]
    text = (f"Measured {datetime.date.today()} on {platform.machine()} ({platform.python_version()}); "
            f"{args.runs} interleaved runs of each, wall time of a fresh process.\n\n"
            "Command: `python benchmarks/cli_startup.py`\n\n" + "\n".join(rows) + "\n")
    save("cli_startup", text, {"runs": args.runs, "seconds": times})


if __name__ == "__main__":
    main()
