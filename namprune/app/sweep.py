"""A sweep: prune the same sparse-trained checkpoint at several ratios (or MACs targets),
fine-tune each, measure them all side by side with the base, and mark the Pareto front.

The output folder appears only when the whole sweep has succeeded (``files.run_dir``):

    DIR/ratio-0.20/      one pruned run folder per point (model.pt, report.json, ...)
    DIR/macs-0.70/
    DIR/sweep.json       every point (and the base): cost, latency, top-1, on which fronts
    DIR/pareto.png       top-1 against MACs and against measured latency
    DIR/widths.png       every layer's width before and after, one line per point
"""

from __future__ import annotations

from pathlib import Path

from ..core.console import note
from ..core.errors import NampruneError
from ..core.settings import LATENCY, FinetuneSettings, LatencySettings, PruneConfig
from ..core.store import checkpoint
from ..core.store.files import check_out_dir, run_dir, write_json
from ..core.store.records import SWEEP, SweepRecord
from .comparison import compare, pruned_layers, save_comparison
from .run_folders import load_run
from .stages import prune_checkpoint


def sweep_configs(base: PruneConfig, ratios: list[float], target_macs: list[float],
                  target_latency: list[float] = ()) -> list[PruneConfig]:
    """One PruneConfig per point, ratios first; each is validated, and no point twice."""
    configs = [base.with_(ratio=r, target_macs=None, target_latency=None) for r in ratios]
    configs += [base.with_(ratio=None, target_macs=t, target_latency=None) for t in target_macs]
    configs += [base.with_(ratio=None, target_macs=None, target_latency=t) for t in target_latency]
    if not configs:
        raise NampruneError("the sweep has no points; give --ratios, --target-macs and/or --target-latency")
    names = [point_name(cfg) for cfg in configs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise NampruneError(f"the sweep names the same point twice: {', '.join(twice)}")
    return configs


def point_name(cfg: PruneConfig) -> str:
    """The point's folder: ``ratio-0.20``, ``macs-0.70`` or ``latency-0.60``."""
    if cfg.ratio is not None:
        return f"ratio-{cfg.ratio:.2f}"
    return f"macs-{cfg.target_macs:.2f}" if cfg.target_macs is not None else f"latency-{cfg.target_latency:.2f}"


def run_sweep(ckpt: str | Path, configs: list[PruneConfig], out: str | Path, finetune: FinetuneSettings,
              data_dir=None, device: str = "auto", settings: LatencySettings = LATENCY, overwrite: bool = False,
              progress: bool = True) -> SweepRecord:
    """Prune ``ckpt`` at every point of ``configs`` into ``out`` and compare them; returns sweep.json."""
    out = Path(out)
    source = checkpoint.model_file(ckpt).resolve()  # absolute: the points' reports must find it later
    checkpoint.read(source)  # a bad checkpoint fails before any work
    check_out_dir(out, overwrite)
    with run_dir(out, overwrite=overwrite) as stage:
        for i, cfg in enumerate(configs, 1):
            note(f"sweep point {i}/{len(configs)}: {point_name(cfg)}")
            prune_checkpoint(source, cfg, stage / point_name(cfg), finetune, data_dir=data_dir, device=device,
                             progress=progress)
        note("measuring the base and every point side by side")
        points = [load_run(stage / point_name(cfg)) for cfg in configs]
        result = compare(points, load_run(source), settings)
        record = _record(result, configs, out, finetune.epochs)
        save_comparison(result, pareto=stage / "pareto.png", widths=stage / "widths.png", layers=pruned_layers(points),
                        title=f"sweep of {source.parent.name}, {finetune.epochs} fine-tuning epoch(s)")
        write_json(stage / SWEEP, record.to_json())
    return record


def _record(result: dict, configs: list[PruneConfig], out: Path, finetune_epochs: int) -> SweepRecord:
    """sweep.json: the base row, one row per point (with its requested setting, its final
    folder and which fronts it is on), and the names on each front."""
    front = result["fronts"]
    rows = [{**row, "on_front": {key: on[i] for key, on in front.items()}} for i, row in enumerate(result["runs"])]
    base, points = rows[0], rows[1:]
    for row, cfg in zip(points, configs):
        row |= {"folder": point_name(cfg), "path": str(out / point_name(cfg)),
                "requested_ratio": cfg.ratio, "target_macs": cfg.target_macs,
                "target_latency": cfg.target_latency}
    return SweepRecord(
        source=base["path"], finetune_epochs=finetune_epochs, settings=result["settings"],
        prune={k: v for k, v in configs[0].to_dict().items() if k not in ("ratio", "target_macs", "target_latency")},
        base=base, points=points,
        front={key: [row["name"] for row, on_it in zip(rows, on) if on_it] for key, on in front.items()})


__all__ = ["point_name", "run_sweep", "sweep_configs"]
