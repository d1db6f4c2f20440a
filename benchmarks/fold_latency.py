"""NAM folding for inference: CPU latency of ResNet-20 without attention, with NAM
unfolded and with NAM folded (``namprune.fold_nam``), side by side in one run.

    python benchmarks/fold_latency.py [--threads 1] [--rounds 7] [--min-run-time 0.3] [--seed 0]
                                      [--onnx] [--compile] [--model resnet20] [--batches 1 32]

Every variant is timed with ``torch.utils.benchmark`` (``blocked_autorange``, its median)
under ``torch.inference_mode``. The variants are measured in interleaved rounds (one
measurement of each per round), so a slow spell on a shared machine hits every variant of
a round alike. "vs none" is the ratio to the network without attention in the same
runtime, batch size and round: the median over rounds, with the lowest and highest in
brackets. The milliseconds are medians over rounds.

``--onnx`` adds the same models exported by ``namprune.app.exporting.to_onnx`` and run by
onnxruntime (the deployment path); ``--compile`` adds ``torch.compile`` (inductor), which
fuses each gate's three elementwise passes into one loop (compiling takes minutes).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import namprune  # first: it quiets torch's CUDA-toolkit warning
import torch
import torch.utils.benchmark as benchmark
from namprune import fold_nam


def trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move BatchNorm statistics and scales away from their initial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def eager_models(arch: str, seed: int, size: int) -> dict[str, torch.nn.Module]:
    def build(attention):
        torch.manual_seed(seed)
        return trained_like(namprune.models.create(arch, 10, attention, input_size=size), seed)

    nam, channel = build("nam"), build("nam-channel")
    return {"none": build("none"), "nam unfolded": nam, "nam folded": fold_nam(nam),
            "nam-channel unfolded": channel, "nam-channel folded": fold_nam(channel)}


def torch_runner(model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
    def run(x):
        with torch.inference_mode():
            return model(x)
    return run


def onnx_runners(models: dict[str, torch.nn.Module], threads: int) -> dict[str, Callable]:
    from namprune.core.deploy.onnx import run_onnx, session, to_onnx

    runners = {}
    for name in ("none", "nam unfolded", "nam folded"):
        proto, _ = to_onnx(models[name], batch=None)
        sess = session(proto.SerializeToString(), threads)
        runners[name] = lambda x, sess=sess: run_onnx(sess, x)
    return runners


def compiled_runners(models: dict[str, torch.nn.Module]) -> dict[str, Callable]:
    return {name: torch_runner(torch.compile(models[name])) for name in ("none", "nam folded")}


def median_ms(run: Callable, x: torch.Tensor, threads: int, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt="run(x)", globals={"run": run, "x": x}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median over rounds is shown")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per blocked_autorange")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--size", type=int, default=32, help="input side (CIFAR: 32)")
    parser.add_argument("--model", default="resnet20", help="registry name (the issue's goal is stated for resnet20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", action="store_true", help="also onnxruntime on the exported models")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (inductor)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = eager_models(args.model, args.seed, args.size)
    runtimes = {"torch eager": {name: torch_runner(m) for name, m in models.items()}}
    if args.onnx:
        runtimes["onnxruntime"] = onnx_runners(models, args.threads)
    if args.compile:
        runtimes["torch.compile"] = compiled_runners(models)

    g = torch.Generator().manual_seed(args.seed)
    rounds: dict[tuple[str, str, int], list[float]] = {}
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=g)
        reference = torch_runner(models["nam unfolded"])(x)
        for runtime, runners in runtimes.items():  # every variant computes the same function (and is warmed up)
            for name, run in runners.items():
                if name != "none" and name.startswith("nam "):
                    torch.testing.assert_close(torch.as_tensor(run(x)), reference, rtol=1e-4, atol=1e-5)
        for _ in range(args.rounds):
            for runtime, runners in runtimes.items():
                for name, run in runners.items():
                    times = rounds.setdefault((runtime, name, batch), [])
                    times.append(median_ms(run, x, args.threads, args.min_run_time))

    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.model} at {args.size}x{args.size}, seed {args.seed}, "
          f"median of {args.rounds} interleaved rounds of blocked_autorange(min_run_time={args.min_run_time})\n")
    header = "| runtime | variant | " + " | ".join(f"batch {b} ms | vs none" for b in args.batches) + " |"
    print(header)
    print("| --- | --- | " + " | ".join("---: | ---:" for _ in args.batches) + " |")
    for runtime, runners in runtimes.items():
        for name in runners:
            cells = []
            for b in args.batches:
                times, base = rounds[(runtime, name, b)], rounds[(runtime, "none", b)]
                ratios = [t / n - 1 for t, n in zip(times, base)]
                spread = f" [{min(ratios):+.0%}, {max(ratios):+.0%}]" if name != "none" else ""
                cells.append(f"{statistics.median(times):.3f} | {statistics.median(ratios):+.1%}{spread}")
            print(f"| {runtime} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
