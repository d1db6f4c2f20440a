"""What a training run keeps outside its loop: the seed, the device and autocast type it runs
with, and what it saves every epoch (the checkpoint and metrics, and the training state an
interrupted run resumes from, see ``fit(resume=...)``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import DataBundle
from ..errors import NampruneError
from ..settings import TrainConfig
from ..store import checkpoint
from ..store.files import write_jsonl
from ..store.records import METRICS, TRAIN_STATE
from . import distributed


def seed_everything(seed: int) -> None:
    """Seed torch (weights, dropout); data order and augmentation are seeded per epoch by the loaders."""
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """The device to train on; under torchrun ``auto`` and ``cuda`` mean this process's own GPU."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NampruneError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NampruneError("--device cuda was asked for but no CUDA GPU is available")
    return distributed.local_device(device)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 by default on CUDA; CPU runs in fp32 unless bf16 is asked for."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def save_state(model, data, cfg, out_dir, optimizer, scheduler, scaler, history, epoch, elapsed) -> None:
    """Everything needed to continue after ``epoch`` (weights included, so the state alone suffices)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "rng": rng, "history": history, "elapsed_s": elapsed}
    checkpoint.save(out_dir / TRAIN_STATE, model, _data_info(data), config=cfg.to_dict(), extra={"train_state": state})


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _data_info(data: DataBundle) -> dict | None:
    return data.info.as_dict() if data.info is not None else None  # your own loaders describe no dataset


def load_train_state(run_dir: str | Path) -> dict | None:
    """The checkpoint payload (with its ``train_state``) of an interrupted run, or None."""
    path = Path(run_dir) / TRAIN_STATE
    return checkpoint.read(path) if path.exists() else None


def save_epoch(model, data: DataBundle, cfg: TrainConfig, out_dir: Path, history: list[dict]) -> None:
    last = history[-1]
    metrics = {"epoch": last["epoch"], "top1": last["test_top1"], "top5": last["test_top5"], "loss": last["test_loss"]}
    checkpoint.save(out_dir / "model.pt", model, _data_info(data), metrics=metrics, config=cfg.to_dict())
    write_jsonl(out_dir / METRICS, history)
