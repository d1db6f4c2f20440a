"""Checkpoint in, pruned and fine-tuned checkpoint out: the steps behind ``namprune prune``
(and each point of a sweep), measured before pruning, right after it, and after fine-tuning.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint, distributed
from .console import is_main_process
from .data import DataBundle, load_data
from .engine import TrainConfig, evaluate, fit, resolve_device
from .errors import NampruneError
from .files import check_out_dir, run_dir, write_json
from .measure import count_macs, count_params
from .pruning import PruneConfig, prune


def finetune_config(train_config: dict, epochs: int, lr: float | None = None, sparsity: float = 0.0,
                    device: str = "auto", batch_size: int | None = None, seed: int | None = None) -> TrainConfig:
    """Fine-tuning settings: those the model was trained with, at a tenth of its learning rate
    (unless ``lr`` is given), a cosine schedule, and no sparsity penalty (unless asked)."""
    base = TrainConfig.from_dict(train_config) if train_config else TrainConfig()
    return replace(base, epochs=epochs, lr=lr if lr is not None else base.lr * 0.1, schedule="cosine",
                   warmup_epochs=0, milestones=None, sparsity=sparsity, device=device,
                   batch_size=batch_size or base.batch_size, seed=base.seed if seed is None else seed)


def compatible_data(payload: dict, data_dir, batch_size: int, device, seed: int = 0, rank: int = 0,
                    world_size: int = 1) -> DataBundle:
    """The dataset a checkpoint was trained on, checked against the checkpoint's classes
    (its training split sharded by ``rank`` of ``world_size`` processes)."""
    info = payload["data"]
    data = load_data(info["name"], data_dir, info["image_size"], batch_size, device, seed=seed, rank=rank,
                     world_size=world_size)
    loaded = data.info.as_dict()
    if info["num_classes"] != loaded["num_classes"] or list(info["classes"]) != list(loaded["classes"]):
        raise NampruneError(f"the checkpoint was trained on {info['num_classes']} classes but the data has "
                            f"{loaded['num_classes']} ({', '.join(map(str, loaded['classes'][:5]))}, ...)")
    if info["in_channels"] != loaded["in_channels"]:
        raise NampruneError(f"the checkpoint expects {info['in_channels']}-channel images but the data has "
                            f"{loaded['in_channels']} channels")
    return data


def cost(model: nn.Module) -> dict:
    return {"params": count_params(model), "macs": count_macs(model)}


def prune_checkpoint(ckpt: str | Path, cfg: PruneConfig, out: str | Path, finetune_epochs: int = 0,
                     finetune_lr: float | None = None, finetune_sparsity: float = 0.0, data_dir=None,
                     device: str = "auto", batch_size: int | None = None, overwrite: bool = False,
                     progress: bool = True) -> dict:
    """Prune a checkpoint, fine-tune it, and write ``out/model.pt`` and ``out/report.json``."""
    started = time.perf_counter()
    cfg.validate()
    payload = checkpoint.read(ckpt)
    check_out_dir(out, overwrite)
    model = checkpoint.build(payload)
    ft = finetune_config(payload.get("config", {}), max(finetune_epochs, 1), finetune_lr, finetune_sparsity,
                         device, batch_size)
    device_ = resolve_device(device)
    data = compatible_data(payload, data_dir, ft.batch_size, device_, ft.seed, distributed.rank(), distributed.world_size())
    model.to(device_)

    before = {**cost(model), **_accuracy(model, data, device_)}
    # under torchrun every rank prunes its own copy: identical weights give identical choices,
    # and fit wraps the pruned model in a new DDP (which checks that the shapes agree)
    result = prune(model, cfg)
    after = {**cost(model), **_accuracy(model, data, device_)}
    finetuned = None
    with run_dir(out, overwrite=overwrite) as stage:
        if finetune_epochs > 0:
            fit(model, data, replace(ft, epochs=finetune_epochs), stage, progress=progress, stage="finetune")
            finetuned = _accuracy(model, data, device_)
        report = _report(ckpt, payload, cfg, result, before, after, finetuned, finetune_epochs, started)
        final = finetuned or after
        if is_main_process():
            checkpoint.save(stage / "model.pt", model, data.info.as_dict(),
                            metrics={"top1": final["top1"], "top5": final["top5"]},
                            config={**payload.get("config", {}), "prune": cfg.to_dict(),
                                    "finetune": replace(ft, epochs=finetune_epochs).to_dict() if finetune_epochs else None})
            write_json(stage / "report.json", report)
    return report


def _accuracy(model: nn.Module, data: DataBundle, device: torch.device) -> dict:
    result = evaluate(model, data.test, device)
    return {"top1": result["top1"], "top5": result["top5"]}


def _report(ckpt, payload, cfg, result, before, after, finetuned, finetune_epochs, started) -> dict:
    return {
        "source": str(checkpoint.model_file(ckpt)),
        "model": payload["arch"]["name"], "attention": payload["arch"]["attention"], "dataset": payload["data"]["name"],
        "ratio": round(result.ratio, 4), "requested_ratio": cfg.ratio, "target_macs": cfg.target_macs,
        "importance": cfg.importance, "scope": cfg.scope, "normalization": cfg.normalization,
        "round_to": cfg.round_to, "max_layer_ratio": cfg.max_layer_ratio,
        "channels_before": result.channels_before, "channels_after": result.channels_after,
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "macs_kept": round(after["macs"] / before["macs"], 4), "macs_speedup": round(before["macs"] / after["macs"], 3),
        "top1_before": before["top1"], "top5_before": before["top5"],
        "top1_pruned": after["top1"], "top5_pruned": after["top5"],
        "top1_finetuned": finetuned["top1"] if finetuned else None,
        "top5_finetuned": finetuned["top5"] if finetuned else None,
        "finetune_epochs": finetune_epochs,
        "layers": result.layers,
        "time_s": round(time.perf_counter() - started, 2),
    }
