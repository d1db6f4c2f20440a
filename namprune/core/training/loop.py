"""The training loop: task loss + NAM sparsity penalty, SGD or AdamW, multistep or cosine
schedule, bf16 autocast on CUDA (or fp16 with loss scaling), DDP under torchrun, optional
torch.compile, a progress bar, per-epoch metrics and checkpoints (``progress`` and ``state``
hold the last two).

One function, ``fit``, is used for sparse training and for fine-tuning after pruning;
``evaluate`` gives top-1 / top-5. Read ``fit`` top to bottom: set up, then one loop over
epochs, each a training pass, an evaluation, and a checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..console import is_main_process, note
from ..data.datasets import DataBundle
from ..data.loaders import as_bundle
from ..deploy.cpus import default_threads
from ..errors import NampruneError
from ..nam.shrink import PlannedShrink, shrink_start_epoch, shrink_strength
from ..nam.sparsity import SparsityPenalty
from ..settings import TrainConfig
from ..store.files import write_json
from ..store.records import SUMMARY, TrainSummary
from . import distributed
from .optim import build_optimizer, lr_factor
from .progress import note_if_starved, progress_bar, report_epoch
from .state import autocast_dtype, resolve_device, save_epoch, save_state, seed_everything, set_rng_state



@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str | None = None, amp: str = "auto") -> dict:
    """Top-1, top-5 (in %) and mean cross-entropy over a loader."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = autocast_dtype(amp, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(2, device=device)
    seen = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with _autocast(device, dtype):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        correct += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        seen += len(labels)
    model.train(was_training)
    if seen == 0:
        raise NampruneError("the evaluation set is empty")
    top1, top5 = (100.0 * correct / seen).tolist()
    return {"top1": round(top1, 4), "top5": round(top5, 4), "loss": round(loss_sum.item() / seen, 6), "samples": seen}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Divergence(NampruneError):
    """The loss became NaN or infinite: the run failed, but not because of bad input."""

    exit_code = 1


class DivergenceWatch:
    """Notes, on the device, the first step of an epoch whose loss was not finite.

    ``record`` never waits for the device; ``check`` reads the note (one host sync, and
    under DDP one all-reduce, so every rank stops at the same step with the same message).
    On CPU the engine checks every step; on CUDA every ``CUDA_CHECK_EVERY`` steps, so the
    GPU is not drained each step just to look at one number.
    """

    CLEAN = 2**62

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), self.CLEAN, dtype=torch.int64, device=device)
        self.value = torch.zeros((), device=device)

    def record(self, total: torch.Tensor, step: int) -> None:
        new = ~torch.isfinite(total.detach()) & (self.first_bad == self.CLEAN)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.value = torch.where(new, total.detach().float(), self.value)

    def check(self, epoch: int) -> None:
        first = int(distributed.all_reduce_min(self.first_bad.clone()))
        if first != self.CLEAN:
            value = self.value.item() if int(self.first_bad) == first else float("nan")
            raise Divergence(f"training diverged: the loss is {value} at epoch {epoch + 1}, step {first + 1}")


CUDA_CHECK_EVERY = 50


def fit(model: nn.Module, data: DataBundle, cfg: TrainConfig, out_dir: str | Path | None = None,
        progress: bool = True, stage: str = "train", resume: dict | None = None, test=None,
        teacher: nn.Module | None = None, after_backward: Callable[[nn.Module], None] | None = None) -> TrainSummary:
    """Train ``model`` in place and return the ``TrainSummary``; with ``out_dir``, write a
    checkpoint, the metrics and the training state (``train_state.pt``) every epoch, and the
    summary at the end.

    ``data`` is a ``load_data`` bundle, or any re-iterable of ``(images, labels)`` batches
    with a length (your own ``DataLoader``), evaluated each epoch on ``test`` when given.

    With a ``teacher`` (the unpruned model, when fine-tuning a pruned one) and ``cfg.distill``
    above zero, the loss mixes the task loss with the distance to the teacher's softened
    predictions (knowledge distillation, Hinton et al. 2015).

    ``after_backward(model)`` runs after every backward pass, on unscaled gradients, before
    the optimizer steps: a gradient-side regularizer such as torch-pruning's
    ``pruner.regularize`` (sparsity learning for its Slimming and group-norm pruners).

    ``resume`` is the ``train_state`` of an interrupted run (see ``state.load_train_state``), whose
    weights ``model`` already holds: training continues after its last complete epoch with
    the same optimizer, schedule, loss scale and random state, so the result equals that of
    an uninterrupted run. Returns the summary (also written to ``out_dir/summary.json``).

    Torch trains on ``cfg.threads`` CPU threads (default ``cpus.default_threads()``), and the
    caller's thread count is restored afterwards.
    """
    threads = cfg.threads or default_threads()
    with torch_threads(threads):
        return _fit(model, data, cfg, out_dir, progress, stage, resume, test, teacher, threads, after_backward)


@contextlib.contextmanager
def torch_threads(count: int):
    """Torch's CPU threads set to ``count`` for a block, then put back: training sets its own
    count, and whatever called it keeps the one it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(model: nn.Module, data, cfg: TrainConfig, out_dir, progress: bool, stage: str, resume: dict | None, test,
         teacher: nn.Module | None, threads: int,
         after_backward: Callable[[nn.Module], None] | None = None) -> TrainSummary:
    data = as_bundle(data, test)
    device = resolve_device(cfg.device)
    distributed.setup(device)
    dtype = autocast_dtype(cfg.amp, device)
    seed_everything(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    penalty = SparsityPenalty(model, cfg.sparsity, cfg.sparsity_targets)
    if cfg.sparsity > 0 and not penalty.active:
        note(f"[yellow]note:[/] the model has no {cfg.sparsity_targets.upper()} scale factors; "
             "the sparsity penalty is off (use --sparsity-targets bn for Network Slimming)")
    objective = Objective(cfg, penalty, _ready_teacher(teacher, device, cfg), after_backward)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = max(1, len(data.train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step / steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    out_dir = Path(out_dir) if out_dir is not None else None
    history: list[dict] = []
    first_epoch, elapsed_before = 0, 0.0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        history, first_epoch, elapsed_before = list(resume["history"]), resume["epoch"], resume["elapsed_s"]
        note(f"resuming {stage} after epoch {first_epoch}/{cfg.epochs}")
    elif out_dir is not None and is_main_process():  # a run killed in its first epoch can resume too
        save_state(model, data, cfg, out_dir, optimizer, scheduler, scaler, history, 0, 0.0)
    start = time.perf_counter() - elapsed_before

    starved = False  # a slow epoch on a busy machine was reported
    swaps = distributed.convert_sync_batchnorm(model, device) if cfg.sync_bn else []
    net = _training_module(model, device, cfg)  # what the steps call: DDP and/or compiled; `model` is what is saved

    for epoch in range(first_epoch, cfg.epochs):
        data.train.set_epoch(epoch)
        objective.shrink = _planned_shrink(model, data, cfg, epoch, steps_per_epoch, objective.shrink)
        try:
            train_stats = train_one_epoch(net, data.train, optimizer, scheduler, scaler, objective, cfg, device, dtype,
                                          epoch, progress and is_main_process())
        except Divergence as exc:
            kept = "" if out_dir is None else (f"; the last good checkpoint (epoch {epoch}) is kept in {out_dir}" if epoch
                                               else f"; the initial state is kept in {out_dir}")
            raise Divergence(f"{exc}; lower the learning rate{kept}") from None
        distributed.average_buffers(model)
        # every rank evaluates the whole test set (it is not sharded), so all agree on the metrics
        test_stats = evaluate(model, data.test, device, cfg.amp) if data.test is not None else {}
        row = {"epoch": epoch + 1, "lr": train_stats.pop("lr"), **train_stats,
               "test_top1": test_stats.get("top1"), "test_top5": test_stats.get("top5"),
               "test_loss": test_stats.get("loss")}
        history.append(row)
        report_epoch(row, cfg.epochs, stage)
        if device.type == "cpu" and not starved:  # said once a run: the cause and the cure do not change
            starved = note_if_starved(history, threads)
        if out_dir is not None and is_main_process():
            save_epoch(model, data, cfg, out_dir, history)
            save_state(model, data, cfg, out_dir, optimizer, scheduler, scaler, history, epoch + 1,
                        time.perf_counter() - start)

    tested = [r["test_top1"] for r in history if r["test_top1"] is not None]
    summary = TrainSummary(stage=stage, epochs=cfg.epochs, final=history[-1], best_top1=max(tested, default=None),
                           train_time_s=round(time.perf_counter() - start, 2), device=str(device), threads=threads,
                           config=cfg.to_dict())
    if out_dir is not None and is_main_process():
        write_json(out_dir / SUMMARY, summary.to_json())
    distributed.revert_sync_batchnorm(swaps)
    model.to(memory_format=torch.contiguous_format)
    return summary


def _planned_shrink(model: nn.Module, data: DataBundle, cfg: TrainConfig, epoch: int, steps_per_epoch: int,
                    last: PlannedShrink | None) -> PlannedShrink | None:
    """This epoch's planned shrinking (the channels a prune would remove now), or None. A model
    that cannot be planned for (no prunable group, a target out of reach) trains on without
    it, said once."""
    if last is not None and not last.active:  # planning failed earlier in this run: it stays off
        return last
    if not cfg.shrink_macs or epoch < shrink_start_epoch(cfg):
        return None
    strength = shrink_strength(cfg, steps_per_epoch, shrink_start_epoch(cfg), lr_factor)
    try:
        return PlannedShrink(model, cfg.shrink_macs, strength, data.calibration, cfg.shrink_scope)
    except NampruneError as exc:
        note(f"[yellow]note:[/] planned shrinking is off for this run: {exc} (--shrink-macs 0 says so up front)")
        return PlannedShrink.off()


def _training_module(model: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    """The module the training steps call: DDP around the model under torchrun (a new wrapper
    for every ``fit``, so a pruned model gets one that knows its new parameters), compiled
    when asked."""
    net = distributed.wrap(model, device)
    return torch.compile(net) if cfg.compile else net


def _ready_teacher(teacher: nn.Module | None, device: torch.device, cfg: TrainConfig) -> nn.Module | None:
    if teacher is None or cfg.distill == 0:
        return None
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(memory_format=torch.channels_last) if cfg.channels_last else teacher


class Objective:
    """What a training step minimises: the task loss (mixed with distillation from a teacher
    when there is one) plus the sparsity penalty, which is reported apart."""

    def __init__(self, cfg: TrainConfig, penalty: SparsityPenalty, teacher: nn.Module | None,
                 after_backward: Callable[[nn.Module], None] | None = None):
        self.cfg, self.penalty, self.teacher, self.after_backward = cfg, penalty, teacher, after_backward
        self.shrink: PlannedShrink | None = None  # set every epoch while planned shrinking runs

    def regularization(self) -> torch.Tensor | None:
        """The sparsity penalty plus the planned shrinking, or None when neither is on."""
        terms = [t for t in (self.penalty(), self.shrink() if self.shrink else None) if t is not None]
        return sum(terms) if terms else None

    def task_loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            target = self.teacher(images)
        t = self.cfg.distill_temperature
        # t^2 keeps the soft term's gradients on the scale of the hard term's (Hinton et al.)
        soft = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(target.float() / t, 1),
                        reduction="batchmean", log_target=True) * t * t
        return (1 - self.cfg.distill) * loss + self.cfg.distill * soft


def train_one_epoch(model, loader, optimizer, scheduler, scaler, objective: Objective, cfg, device, dtype, epoch,
                    show_progress) -> dict:
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    loss_sum = torch.zeros((), device=device)
    penalty_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    watch = DivergenceWatch(device)
    check_every = CUDA_CHECK_EVERY if device.type == "cuda" else 1
    seen, start = 0, time.perf_counter()
    bar = progress_bar(show_progress)
    task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader), loss=0.0, acc=0.0, ips=0.0)
    last_refresh = 0.0
    with bar:
        for step, (images, labels) in enumerate(loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(device, dtype):
                logits = model(images)
                loss = objective.task_loss(logits, images, labels)
            reg = objective.regularization()
            total = loss if reg is None else loss + reg
            watch.record(total, step)
            if (step + 1) % check_every == 0 or step + 1 == len(loader):
                watch.check(epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if objective.after_backward is not None:
                scaler.unscale_(optimizer)  # the regularizer adds to the true gradients
                objective.after_backward(distributed.unwrap(model))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            if reg is not None:
                penalty_sum += reg.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            now = time.perf_counter()
            if show_progress and (now - last_refresh > 0.5 or step + 1 == len(loader)):
                last_refresh = now
                loss_now, correct_now = torch.stack([loss_sum, correct]).tolist()  # one host sync per refresh
                bar.update(task, completed=step + 1, loss=loss_now / seen, acc=100 * correct_now / seen,
                           ips=seen / (now - start))
    # totals over every rank, so an epoch's row describes the whole run and not rank 0's shard
    totals = torch.stack([loss_sum, penalty_sum, correct, torch.tensor(float(seen), device=device)])
    loss_sum, penalty_sum, correct, seen = distributed.all_reduce_sum(totals).tolist()
    elapsed = time.perf_counter() - start  # after the sync above, so pending GPU work is counted
    seen = max(seen, 1)
    return {"lr": lr, "train_loss": round(loss_sum / seen, 6), "train_top1": round(100 * correct / seen, 4),
            "penalty": round(penalty_sum / seen, 8), "images_per_s": round(seen / elapsed, 1),
            "epoch_time_s": round(elapsed, 2)}


