"""The Python API: sparse training, pruning to half the MACs and fine-tuning, on the embedded digits."""

import copy
import os

import namprune
from namprune import PruneConfig, count_macs, prune

quick = os.environ.get("NAMPRUNE_EXAMPLE_QUICK") == "1"  # the test suite's short run: the same steps, 1 epoch each
data = namprune.load_data("digits", image_size=16, batch_size=32)
model = namprune.models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
epochs = (1, 1) if quick else (15, 5)  # sparse training, fine-tuning
sparse = namprune.TrainConfig(epochs=epochs[0], lr=0.1, schedule="cosine", sparsity=0.01, sparsity_targets="bn")
namprune.fit(model, data, sparse, progress=False)  # sparse training, in place

slim = copy.deepcopy(model)
result = prune(slim, PruneConfig(target_macs=0.5), data.calibration)  # keep half of the MACs
print(f"removed {result.ratio:.0%} of {result.channels_before} channels")
namprune.fit(slim, data, namprune.TrainConfig(epochs=epochs[1], lr=0.01, schedule="cosine"), progress=False)

for name, m in [("sparse-trained", model), ("pruned + fine-tuned", slim)]:
    top1 = namprune.evaluate(m, data.test)["top1"]
    print(f"{name:20s} top-1 {top1:6.2f} %   MACs {count_macs(m) / 1e6:5.2f} M")
