"""Can the NAM gates that stay run cheaper in onnxruntime? Equivalent ONNX forms of the folded
gates, timed side by side against the network without attention.

    python benchmarks/gate_forms.py --rounds 7

ResNet-20 for 32x32x3 inputs, BatchNorm statistics and scales randomized as training would
leave them (so no gate is constant and all stay). Forms of the folded gate
``x * sigmoid(a * x + b)``, every one checked to compute the same function:

    batchnorm   channel affine as an eval-mode BatchNormalization (namprune's form)
    mul-add     channel affine as Mul and Add with (C, 1, 1) constants
    dwconv      channel affine as a depthwise 1x1 convolution with bias
    (C,H,W)     spatial constants expanded over the channels (same-shape elementwise ops)
    channel     only the channel branch (what remains when every spatial gate is constant)

For each form: the operators left in onnxruntime's optimized graph (layout reorders show
where the NCHWc kernels lose their fused form) and the latency at batch 1 and 32, all
timed side by side; "vs none" is the ratio within each round, median [lowest, highest].
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import platform
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from namprune import fold_nam, models
from namprune.core.deploy.onnx import session_options, to_onnx
from namprune.core.deploy.timing import measure_latency, round_ratios
from namprune.core.nam.fold import FoldedChannelNAM, FoldedSpatialNAM
from namprune.core.settings import LatencySettings


class MulAdd(FoldedChannelNAM):
    def logits(self, x):
        return x * self.a.view(-1, 1, 1) + self.b.view(-1, 1, 1)


class DepthwiseConv(FoldedChannelNAM):
    def logits(self, x):
        return F.conv2d(x, self.a.view(-1, 1, 1, 1), self.b, groups=self.a.numel())


class FullSpatial(nn.Module):
    def __init__(self, a, b, channels):
        super().__init__()
        self.register_buffer("a", a.expand(channels, -1, -1).contiguous())
        self.register_buffer("b", b.expand(channels, -1, -1).contiguous())

    def forward(self, x):
        return x * torch.sigmoid(torch.addcmul(self.b, self.a, x))


def replaced(model: nn.Module, kind: type, make) -> nn.Module:
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, kind):
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent), child, make(m, out.get_submodule(parent)))
    return out


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def optimized_ops(onnx_bytes: bytes) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(1)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node))


def ratio_cell(record: dict, none: dict) -> str:
    """The ratio to the network without attention within each round: median [lowest, highest]."""
    ratio, low, high = round_ratios(record, none)
    return f"{ratio:.2f}x [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    def build(attention):
        torch.manual_seed(args.seed)
        return trained_like(models.create("resnet20", 10, attention, input_size=32, in_channels=3), args.seed)

    nam = fold_nam(build("nam"))
    forms = {"none": build("none"), "batchnorm": nam,
             "mul-add": replaced(nam, FoldedChannelNAM, lambda m, p: MulAdd(m.a, m.b)),
             "dwconv": replaced(nam, FoldedChannelNAM, lambda m, p: DepthwiseConv(m.a, m.b)),
             "(C,H,W)": replaced(nam, FoldedSpatialNAM, lambda m, p: FullSpatial(m.a, m.b, p.channel.a.numel())),
             "channel": fold_nam(build("nam-channel"))}
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        for name in ("mul-add", "dwconv", "(C,H,W)"):
            torch.testing.assert_close(forms[name](x), nam(x), rtol=1e-4, atol=1e-5)
    files = {name: to_onnx(m, None)[0].SerializeToString() for name, m in forms.items()}
    records = measure_latency(files, LatencySettings(batches=(1, 32), threads=1, rounds=args.rounds,
                                                     min_run_time=args.min_time))
    first = records["none"][1]
    print(f"{datetime.date.today()}, {platform.machine()} {platform.system()}, {first['cores']} cores, load "
          f"{first['load_before']} -> {first['load_after']}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"1 thread, median of {args.rounds} interleaved rounds of >= {args.min_time} s, seed {args.seed}\n")
    print("| form | reorders | optimized graph | batch 1 ms | vs none | batch 32 ms | vs none | trusted |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for name, by_batch in records.items():
        ops = optimized_ops(files[name])
        reorders = sum(v for k, v in ops.items() if k.startswith("Reorder"))
        listing = ", ".join(f"{v} {k}" for k, v in ops.items() if not k.startswith("Reorder"))
        cells = " | ".join(f"{by_batch[b]['median_ms']:.3f} | {ratio_cell(by_batch[b], records['none'][b])}" for b in (1, 32))
        trusted = "yes" if all(r["trusted"] for r in by_batch.values()) else "no"
        print(f"| {name} | {reorders} | {listing} | {cells} | {trusted} |")


if __name__ == "__main__":
    main()
