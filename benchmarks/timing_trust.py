"""Timings a user can trust: the same model timed with 1 and with all cores' threads, on the
machine as it is and with busy-loop jobs added, with namprune's verdict on every figure.

    python benchmarks/timing_trust.py --burn 0 2 --rounds 5

For each number of busy-loop processes in --burn (0: the machine as it is), ResNet-20 with
NAM folded (32x32x3) is timed in torch eager and onnxruntime, at batch 1 and 32, once with
one thread and once with one thread per core, all side by side in interleaved rounds
(``namprune.core.deploy.timing.measure_latency``). Printed: median, spread across rounds, share of time
the timing threads waited for a CPU, and whether namprune trusts the figure.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys

import torch

from namprune import fold_nam, models
from namprune.core.deploy.onnx import session, to_onnx
from namprune.core.deploy.timing import available_cores, measure_latency
from namprune.core.settings import LatencySettings


def busy_loops(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burn", type=int, nargs="+", default=[0, 2], help="busy-loop processes added, per condition")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = fold_nam(models.create("resnet20", 10, "nam", input_size=32, in_channels=3).eval())
    onnx_bytes = to_onnx(model, None)[0].SerializeToString()
    cores = available_cores()
    print(f"{datetime.date.today()}, {platform.machine()} {platform.system()}, {cores} cores, torch {torch.__version__}, "
          f"ResNet-20 + NAM folded, 32x32x3, seed {args.seed}, {args.rounds} interleaved rounds of >= {args.min_time} s\n")
    print("| busy loops added | load (1 min) | runtime | threads | batch | median ms | spread | CPU wait | trusted |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for burn in args.burn:
        burners = busy_loops(burn)
        try:
            records = {}
            for threads in sorted({1, cores}):  # each thread count is its own side-by-side run
                settings = LatencySettings(batches=(1, 32), threads=threads, rounds=args.rounds,
                                           min_run_time=args.min_time)
                timed = measure_latency({"torch eager": model, "onnxruntime": session(onnx_bytes, threads)},
                                        settings)
                records |= {(name, threads): by_batch for name, by_batch in timed.items()}
        finally:
            for p in burners:
                p.kill()
                p.wait()
        for (name, threads), by_batch in records.items():
            for batch, r in by_batch.items():
                wait = "n/a" if r["cpu_wait"] is None else f"{r['cpu_wait']:.0%}"
                print(f"| {burn} | {r['load_before']} | {name} | {threads} | {batch} | {r['median_ms']:.3f} | "
                      f"{r['spread']:.0%} | {wait} | {'yes' if r['trusted'] else 'no'} |")


if __name__ == "__main__":
    main()
