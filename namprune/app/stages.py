"""The runs behind the commands: train a model into a run folder (or continue an interrupted
one), and prune a checkpoint, fine-tune it and measure it before pruning, right after it,
and after fine-tuning. Each run writes into ``OUT.partial`` and becomes ``OUT`` only when it
is complete, so an interrupted run can be resumed and a failed one destroys nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..core import models
from ..core.console import is_main_process, note
from ..core.data.datasets import DataBundle, load_data
from ..core.errors import NampruneError
from ..core.nam.modules import check_attention
from ..core.deploy.measure import measure_accuracy, measure_cost
from ..core.pruning.prune import prune
from ..core.settings import (DEFAULT_ATTENTION, DEFAULT_WORKERS, FINETUNE, FINETUNE_LR_FACTOR, FinetuneSettings, PruneConfig,
                             TrainConfig, resolve_normalization)
from ..core.store import checkpoint
from ..core.store.files import check_out_dir, run_dir, staging_dir, train_resume_command, write_json
from ..core.store.paths import check_resumable
from ..core.store.records import REPORT, TRAIN_STATE, PruneReport, TrainSummary
from ..core.training import distributed
from ..core.training.loop import fit
from ..core.training.state import load_train_state, resolve_device, seed_everything



def train_model(model_name: str, dataset: str, cfg: TrainConfig, out: str | Path, data_dir=None,
                image_size: int | None = None, attention: str = DEFAULT_ATTENTION, workers: int = DEFAULT_WORKERS,
                overwrite: bool = False,
                progress: bool = True, weights: str | Path | None = None, nam_after: list[str] | None = None) -> TrainSummary:
    """Train a new model into the run folder ``out``, from the local state_dict ``weights`` when
    given; returns the summary."""
    out = Path(out)
    check_out_dir(out, overwrite, resume=f"`{train_resume_command(out)}`")
    models.check_name(model_name)  # before the data is loaded
    check_attention(attention)
    device = resolve_device(cfg.device)
    data = load_data(dataset, data_dir, image_size, cfg.batch_size, device, workers, cfg.seed,
                     rank=distributed.rank(), world_size=distributed.world_size())
    seed_everything(cfg.seed)  # the initial weights depend on the seed alone
    model = models.create(model_name, data.info.num_classes, attention, data.info.image_size, data.info.in_channels,
                          weights=weights, nam_after=nam_after)
    cfg = cfg.with_(extra={**cfg.extra, "model": model_name, "dataset": dataset, "attention": attention,
                           "data_dir": str(data_dir) if data_dir else None, "weights": str(weights) if weights else None})
    with run_dir(out, overwrite=overwrite) as stage:
        summary = fit(model, data, cfg, stage, progress=progress)
        (stage / TRAIN_STATE).unlink(missing_ok=True)
    return summary


def resume_training(out: str | Path, data_dir=None, device: str = "auto", workers: int = DEFAULT_WORKERS,
                    progress: bool = True, threads: int | None = None) -> TrainSummary:
    """Continue the interrupted training run ``out`` after its last complete epoch (on
    ``threads`` CPU threads when given, else on the ones it was started with)."""
    out = Path(out)
    payload = load_train_state(check_resumable(out))
    cfg = TrainConfig.from_dict(payload["config"])
    if device != "auto":
        cfg = cfg.with_(device=device)
    if threads is not None:
        cfg = cfg.with_(threads=threads)
    data = compatible_data(payload, data_dir or cfg.extra.get("data_dir"), cfg.batch_size, resolve_device(cfg.device),
                           cfg.seed, workers, rank=distributed.rank(), world_size=distributed.world_size())
    model = checkpoint.build(payload)
    with run_dir(out, resume=True) as stage:
        summary = fit(model, data, cfg, stage, progress=progress, resume=payload["train_state"])
        (stage / TRAIN_STATE).unlink(missing_ok=True)
    return summary


def trained_with(train_config: dict) -> TrainConfig:
    """The settings a checkpoint was trained with (the defaults for one that records none)."""
    return TrainConfig.from_dict(train_config) if train_config else TrainConfig()


def finetune_config(train_config: dict, finetune: FinetuneSettings, device: str = "auto",
                    threads: int | None = None) -> TrainConfig | None:
    """Fine-tuning as training: the settings the model was trained with, at ``FINETUNE_LR_FACTOR``
    of its learning rate (unless ``finetune.lr`` is given), a cosine schedule, the penalty and the
    distillation weight ``finetune`` asks for, on this machine's ``threads``. None for
    ``finetune.epochs`` 0: no fine-tuning."""
    if finetune.epochs == 0:
        return None
    base = trained_with(train_config)
    return base.with_(epochs=finetune.epochs, lr=finetune.lr or base.lr * FINETUNE_LR_FACTOR, schedule="cosine",
                      warmup_epochs=0, milestones=None, sparsity=finetune.sparsity, shrink_macs=0.0, device=device,
                      batch_size=finetune.batch_size or base.batch_size, distill=finetune.distill, threads=threads)


def compatible_data(payload: dict, data_dir, batch_size: int, device, seed: int = 0, workers: int = DEFAULT_WORKERS,
                    rank: int = 0, world_size: int = 1, augment: bool = True) -> DataBundle:
    """The dataset a checkpoint was trained on, checked against the checkpoint's channels and
    classes (its training split sharded by ``rank`` of ``world_size`` processes)."""
    info = payload["data"]
    if not info:
        raise NampruneError("the checkpoint names no dataset (it was saved with namprune.save); evaluate and fine-tune "
                            "it in Python with namprune.evaluate and namprune.fit on your own data")
    data = load_data(info["name"], data_dir, info["image_size"], batch_size, device, workers, seed=seed, rank=rank,
                     world_size=world_size, augment=augment)
    loaded = data.info.as_dict()
    if info["in_channels"] != loaded["in_channels"]:
        raise NampruneError(f"the checkpoint expects {info['in_channels']}-channel images but the data has "
                            f"{loaded['in_channels']} channels")
    if info["num_classes"] != loaded["num_classes"] or list(info["classes"]) != list(loaded["classes"]):
        raise NampruneError(f"the checkpoint was trained on {info['num_classes']} classes "
                            f"({', '.join(map(str, info['classes'][:4]))}, ...) but the data has {loaded['num_classes']} "
                            f"({', '.join(map(str, loaded['classes'][:4]))}, ...)")
    return data


def shrunk_for(payload: dict) -> float | None:
    """The fraction of the MACs a checkpoint was shrunk for while training
    (``TrainConfig.shrink_macs``); None when it was not, or has been pruned since."""
    planned = (payload.get("config") or {}).get("shrink_macs")
    return None if not planned or payload.get("pruning_history") else planned


def planned_macs(ckpt: str | Path) -> float | None:
    """``shrunk_for`` of a checkpoint file, said in a note: the amount ``namprune prune`` takes
    when none is given."""
    planned = shrunk_for(checkpoint.read(ckpt))
    if planned is None:
        return None
    note(f"pruning to keep {planned} of the MACs, what {checkpoint.model_file(ckpt)} was shrunk for in training "
         "(--target-macs or --ratio to choose another amount)")
    return planned


PRUNED = "pruned.json"  # the report up to pruning (a PruneReport), kept while fine-tuning runs


def prune_checkpoint(ckpt: str | Path, cfg: PruneConfig, out: str | Path, finetune: FinetuneSettings = FINETUNE,
                     data_dir=None, device: str = "auto", overwrite: bool = False, progress: bool = True,
                     resume: bool = False, threads: int | None = None) -> PruneReport:
    """Prune a checkpoint, fine-tune it on ``threads`` CPU threads, and write ``out/model.pt``
    and ``out/report.json``.

    With ``resume``, an interrupted fine-tuning in ``out`` continues from its last epoch.
    """
    started = time.perf_counter()
    out = Path(out)
    payload = checkpoint.read(ckpt)
    saved = load_train_state(staging_dir(out)) if resume else None
    resuming = saved is not None and (staging_dir(out) / PRUNED).exists()
    if not resuming:
        check_out_dir(out, overwrite)
    ft = finetune_config(payload.get("config", {}), finetune, device, threads)  # None: no fine-tuning
    base = trained_with(payload.get("config", {}))  # pruning and measuring read the data as fine-tuning would
    device_ = resolve_device(device)
    data = compatible_data(payload, data_dir, finetune.batch_size or base.batch_size, device_, base.seed,
                           rank=distributed.rank(), world_size=distributed.world_size())

    if resuming:  # the pruned model and its measurements were saved before fine-tuning began
        model, report = checkpoint.build(saved).to(device_), PruneReport.read(staging_dir(out) / PRUNED)
    else:
        model = checkpoint.build(payload).to(device_)
        # under torchrun every rank prunes its own copy: identical weights give identical choices,
        # and fit wraps the pruned model in a new DDP (which checks that the shapes agree)
        report = _prune_and_measure(model, cfg, data, device_, ckpt, out, payload)
    with run_dir(out, overwrite=overwrite, resume=resuming) as stage:
        if is_main_process():
            write_json(stage / PRUNED, report.to_json())
        finetuned = {} if ft is None else _finetune(model, data, ft, stage, progress,
                                                    saved["train_state"] if resuming else None, _teacher(payload, ft))
        report = report.model_copy(update={**finetuned, "finetune_epochs": finetune.epochs,
                                           "time_s": round(time.perf_counter() - started, 2)})
        _save_pruned(stage, model, data, {**payload.get("config", {}), "prune": cfg.to_dict(),
                                          "finetune": ft.to_dict() if ft is not None else None}, report)
    return report


def finetune_pruned(pruned: str | Path, out: str | Path, finetune: FinetuneSettings, data_dir=None, device: str = "auto",
                    overwrite: bool = False, progress: bool = True, resume: bool = False,
                    threads: int | None = None) -> PruneReport:
    """Fine-tune a pruned run (written by ``prune_checkpoint``) into ``out``; its report gains
    the fine-tuned accuracy. With ``resume``, an interrupted fine-tuning continues."""
    if finetune.epochs < 1:  # zero epochs is no fine-tuning: nothing to run, said before anything is read
        raise NampruneError(f"fine-tuning needs at least one epoch, got {finetune.epochs}")
    started = time.perf_counter()
    out = Path(out)
    payload, prior = checkpoint.read(pruned), PruneReport.read(checkpoint.model_file(pruned).parent / REPORT)
    saved = load_train_state(staging_dir(out)) if resume else None
    if saved is None:
        check_out_dir(out, overwrite)
    ft = finetune_config(payload.get("config", {}), finetune, device, threads)
    device_ = resolve_device(device)
    data = compatible_data(payload, data_dir, ft.batch_size, device_, ft.seed, rank=distributed.rank(),
                           world_size=distributed.world_size())
    model = checkpoint.build(saved or payload).to(device_)
    with run_dir(out, overwrite=overwrite, resume=saved is not None) as stage:
        teacher = _teacher(checkpoint.read(prior.source), ft) if ft.distill else None  # read only when used
        finetuned = _finetune(model, data, ft, stage, progress, saved["train_state"] if saved else None, teacher)
        report = prior.model_copy(update={
            **finetuned, "source_relative": os.path.relpath(prior.source, out.resolve()), "finetune_epochs": ft.epochs,
            "time_s": round((prior.time_s or 0) + time.perf_counter() - started, 2)})
        _save_pruned(stage, model, data, {**payload.get("config", {}), "finetune": ft.to_dict()}, report)
    return report


def _teacher(payload: dict, ft: TrainConfig) -> nn.Module | None:
    """The unpruned model the pruned one learns from while fine-tuning, when it distills."""
    return checkpoint.build(payload) if ft.distill else None


def _finetune(model: nn.Module, data: DataBundle, ft: TrainConfig, stage: Path, progress: bool, resume: dict | None,
              teacher: nn.Module | None = None) -> dict:
    """Fine-tune ``model``; returns the report's fields that say how it went."""
    fit(model, data, ft, stage, progress=progress, stage="finetune", resume=resume, teacher=teacher)
    accuracy = measure_accuracy(model, data, resolve_device(ft.device))
    return {"top1_finetuned": accuracy["top1"], "top5_finetuned": accuracy["top5"], "finetune_distill": ft.distill}


def _save_pruned(stage: Path, model: nn.Module, data: DataBundle, config: dict, report: PruneReport) -> None:
    """The finished pruned run: model.pt and report.json; the files kept for resuming go."""
    if not is_main_process():
        return
    metrics = {"top1": report.top1, "top5": report.top5}
    checkpoint.save(stage / "model.pt", model, data.info.as_dict(), metrics=metrics, config=config)
    write_json(stage / REPORT, report.to_json())
    for leftover in (PRUNED, TRAIN_STATE):
        (stage / leftover).unlink(missing_ok=True)


def _prune_and_measure(model: nn.Module, cfg: PruneConfig, data: DataBundle, device: torch.device, ckpt, out,
                       payload: dict) -> PruneReport:
    """Prune ``model`` in place; the report of accuracy and cost before pruning, right after it,
    and after BatchNorm recalibration (fine-tuning adds to it)."""
    before = {**measure_cost(model), **measure_accuracy(model, data, device)}
    result = prune(model, cfg, data.calibration, recalibration=data.recalibration,
                   before_recalibration=lambda pruned: measure_accuracy(pruned, data, device))
    after = {**measure_cost(model), **measure_accuracy(model, data, device)}
    applied, source = result.config, checkpoint.model_file(ckpt).resolve()
    return PruneReport(**{
        "source": str(source), "source_relative": os.path.relpath(source, Path(out).resolve()),
        "model": payload["arch"]["name"], "attention": payload["arch"]["attention"], "dataset": payload["data"]["name"],
        "ratio": round(result.ratio, 4), "requested_ratio": cfg.ratio, "target_macs": cfg.target_macs,
        "target_latency": cfg.target_latency,
        "latency": result.latency and {**result.latency, "macs_before": before["macs"], "macs_after": after["macs"]},
        "importance": applied.importance, "scope": cfg.scope,
        "normalization": resolve_normalization(applied.importance, applied.normalization),
        "round_to": cfg.round_to, "rounding": result.rounding, "max_layer_ratio": cfg.max_layer_ratio,
        "cost_exponent": applied.cost_exponent,
        "channels_before": result.channels_before, "channels_after": result.channels_after,
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "macs_kept": round(after["macs"] / before["macs"], 4), "macs_speedup": round(before["macs"] / after["macs"], 3),
        "top1_before": before["top1"], "top5_before": before["top5"],
        "top1_pruned": after["top1"], "top5_pruned": after["top5"],
        "recalibrated": cfg.recalibrate, "calibration_images": cfg.calibration_images,
        "top1_pruned_uncalibrated": result.uncalibrated["top1"], "layers": result.layers,
    })
