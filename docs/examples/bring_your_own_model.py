"""Bring your own model: timm's ResNet-18 (any nn.Module works the same way) gets NAM, sparse
training, pruning to half its MACs, a checkpoint that reloads safely and a checked ONNX file."""

import os

import timm
import torch

import namprune

quick = os.environ.get("NAMPRUNE_EXAMPLE_QUICK") == "1"  # the test suite's short run: the same steps, 1 epoch each
torch.manual_seed(0)
data = namprune.load_data("digits", image_size=32, batch_size=64)  # any iterable of (images, labels) works


def resnet18() -> torch.nn.Module:
    return timm.create_model("resnet18", num_classes=10, in_chans=1)


net = resnet18()
x = next(iter(data.test))[0][:8]  # a batch of the inputs the model takes
namprune.attach_nam(net, x)  # NAM at the end of every residual branch
print(f"NAM after {len(net.namprune_nam['after'])} layers: {', '.join(net.namprune_nam['after'][:3])}, ...")

sparse = namprune.TrainConfig(epochs=1 if quick else 4, lr=0.05)  # NAM sparsity penalty on every scale factor by default
namprune.fit(net, data.train, sparse, test=data.test, progress=False)
top1, macs = namprune.evaluate(net, data.test)["top1"], namprune.count_macs(net)

# channels are scored on training images (data.calibration: unaugmented), then BatchNorm is recalibrated
namprune.prune(net, namprune.PruneConfig(target_macs=0.5), data.calibration, example_input=x)
finetune = namprune.TrainConfig(epochs=1 if quick else 2, lr=0.01, schedule="cosine")
namprune.fit(net, data.train, finetune, test=data.test, progress=False, stage="finetune")
print(f"top-1 {top1:.2f} % -> {namprune.evaluate(net, data.test)['top1']:.2f} %, "
      f"MACs {macs / 1e6:.1f} M -> {namprune.count_macs(net) / 1e6:.1f} M")

namprune.save(net, "resnet18-pruned.pt")  # weights + pruning history: torch.load(weights_only=True) reads it
fresh = namprune.load("resnet18-pruned.pt", model=resnet18())  # NAM attached again, history replayed
print("reloaded model gives the same outputs:", torch.equal(fresh(x), net.eval()(x)))

record = namprune.export_onnx(fresh, "resnet18-pruned.onnx", test_images=x)  # checked in onnxruntime
print(f"ONNX: {record.file_bytes / 2**20:.1f} MiB, onnxruntime vs torch: max relative difference "
      f"{max(r['max_rel_diff'] for r in record.parity['results']):.1e}")
