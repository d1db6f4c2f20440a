"""How long does `namprune demo` take on this machine while another single-thread job keeps
one core busy, with OMP_NUM_THREADS unset (what a new user has)?

    python benchmarks/demo_busy.py [--other-jobs 1]

The other job is a plain Python loop in its own process (one busy core, no threads). The
demo runs as a fresh `namprune demo` process into a temporary folder, its wall time measured
from start to exit; the load average when it started is recorded, and so are the threads
training chose. Writes benchmarks/results/demo_busy.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import save

BUSY_LOOP = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other-jobs", type=int, default=1)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    others = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.other_jobs)]
    try:
        time.sleep(30)  # the load average sees the other jobs, as it would on a machine already busy
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "namprune", "demo", "--out", f"{work}/demo", "--quiet"],
                                  env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            summary = json.loads(Path(f"{work}/demo/train/summary.json").read_text()) if done.returncode == 0 else {}
    finally:
        for other in others:
            other.kill()
    if done.returncode != 0:
        sys.exit(f"the demo failed:\n{done.stderr[-2000:]}")
    threads, speed = summary.get("threads"), summary["final"]["images_per_s"]
    text = (f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores: `namprune demo` "
            f"with OMP_NUM_THREADS unset while {args.other_jobs} other single-thread job(s) ran (load average "
            f"{load:.2f} when it started): **{wall / 60:.1f} minutes** wall time, training on {threads} thread(s) "
            f"at {speed:.0f} images/s in its last epoch.\n\nCommand: `python benchmarks/demo_busy.py`\n")
    save("demo_busy", text, {"wall_s": round(wall, 1), "load": load, "threads": threads, "images_per_s": speed,
                             "other_jobs": args.other_jobs})


if __name__ == "__main__":
    main()
