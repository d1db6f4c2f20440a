"""Run by tests/test_distributed.py under torchrun: train, prune and fine-tune with the
library's own functions, saving what each rank ends up with so the test can compare ranks.

    python -m torch.distributed.run --nproc_per_node 2 tests/torchrun_worker.py OUT
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from namprune import TrainConfig, fit, load_data, models
from namprune.app.stages import prune_checkpoint
from namprune.core.pruning.prune import prune
from namprune.core.settings import FinetuneSettings, PruneConfig
from namprune.core.training import distributed

out = Path(sys.argv[1])
rank, world_size = distributed.rank(), distributed.world_size()
data = load_data("digits", batch_size=32, rank=rank, world_size=world_size)

torch.manual_seed(100 + rank)  # different initial weights on each rank: DDP must make them agree
model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
torch.save(model.state_dict(), out / f"initial-{rank}.pt")

# every rank passes its own folder: only rank 0's may appear
fit(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.05, schedule="cosine", device="cpu"),
    out / f"train-rank{rank}", progress=False)
torch.save(model.state_dict(), out / f"trained-{rank}.pt")

prune(model, PruneConfig(ratio=0.3), data.calibration)
fit(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.01, schedule="cosine", sparsity=0, device="cpu"),
    progress=False, stage="finetune")
torch.save(model.state_dict(), out / f"finetuned-{rank}.pt")

dist.barrier()  # rank 0's checkpoint is complete before anyone reads it
prune_checkpoint(out / "train-rank0", PruneConfig(ratio=0.3), out / "pruned", FinetuneSettings(epochs=1), device="cpu",
                 progress=False)
distributed.teardown()
