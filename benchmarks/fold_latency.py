"""NAM folding for inference: CPU latency of ResNet-20 without attention, with NAM
unfolded, and with NAM folded (``namprune.fold_nam``), side by side in one run.

    python benchmarks/fold_latency.py [--threads 1] [--rounds 5] [--min-run-time 0.5] [--seed 0]

Every variant is timed with ``torch.utils.benchmark`` (``blocked_autorange``, medians)
under ``torch.inference_mode``. The variants are measured in interleaved rounds (one
measurement of each per round) and the table shows the median over rounds, so a slow
spell on a shared machine hits every variant alike. Ratios are against ``none`` at the
same batch size.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.utils.benchmark as benchmark

import namprune
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


def variants(seed: int, size: int) -> dict[str, torch.nn.Module]:
    def build(attention):
        torch.manual_seed(seed)
        return trained_like(namprune.models.create("resnet20", 10, attention, input_size=size), seed)

    nam, channel = build("nam"), build("nam-channel")
    return {"none": build("none"), "nam unfolded": nam, "nam folded": fold_nam(nam),
            "nam-channel unfolded": channel, "nam-channel folded": fold_nam(channel)}


def median_ms(model, x, threads: int, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt="with torch.inference_mode(): model(x)", globals={"model": model, "x": x, "torch": torch},
                            num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median over rounds is shown")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per blocked_autorange")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--size", type=int, default=32, help="input side (CIFAR: 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    models = variants(args.seed, args.size)
    g = torch.Generator().manual_seed(args.seed)
    print(f"torch {torch.__version__}, {args.threads} thread(s), input {args.size}x{args.size}, seed {args.seed}, "
          f"{args.rounds} rounds x blocked_autorange(min_run_time={args.min_run_time})")
    print()
    print("| batch | variant | median ms | vs none |")
    print("| ---: | --- | ---: | ---: |")
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=g)
        with torch.inference_mode():  # same outputs, and every variant warmed up
            reference = models["nam unfolded"](x)
            torch.testing.assert_close(models["nam folded"](x), reference, rtol=1e-5, atol=1e-5)
        rounds = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                rounds[name].append(median_ms(model, x, args.threads, args.min_run_time))
        medians = {name: statistics.median(values) for name, values in rounds.items()}
        for name, ms in medians.items():
            print(f"| {batch} | {name} | {ms:.3f} | {ms / medians['none'] - 1:+.1%} |")


if __name__ == "__main__":
    main()
