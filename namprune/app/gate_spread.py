"""The NAM gate table of ``namprune rank`` and ``namprune info``: what each gate does on real images."""

from __future__ import annotations

from rich.table import Table

from ..core.console import console, note
from ..core.nam.gates import has_gates, measure_gates
from ..core.settings import GATE_TOLERANCE
from .datasource import calibration_images, checkpoint_data


def print_gate_spread(model, payload: dict, data_dir=None, tolerance: float = GATE_TOLERANCE) -> list[dict] | None:
    """Measure every NAM gate on training images and print one row per gate; returns the rows
    (None for a model without NAM, or when the training images are not at hand)."""
    if not has_gates(model):
        return None
    images = calibration_images(checkpoint_data(payload, data_dir))
    if images is None:
        note(f"NAM gates: the {payload['data']['name']} training images are not at hand; give --data-dir to see "
             "what each gate does")
        return None
    stats = measure_gates(model.eval(), images)
    table = Table(title=f"NAM gates on {len(images)} training images (spread: std / mean of the gate; max dev.: the "
                        f"largest |gate - mean| / mean; a gate whose spread is within {tolerance:g} is a candidate for "
                        f"replacement by its constant at export)")
    for column in ("gate", "kind", "size", "mean", "min", "max", "spread", "max dev.", "at export"):
        table.add_column(column, justify="left" if column in ("gate", "kind", "at export") else "right")
    for s in stats:
        table.add_row(s.name, s.kind, s.size, f"{s.mean:.4f}", f"{s.low:.4f}", f"{s.high:.4f}", f"{s.spread:.2%}", f"{s.max_deviation:.1%}",
                      "candidate" if s.removable(tolerance) else "kept")
    console.print(table)
    constant = sum(s.removable(tolerance) for s in stats)
    console.print(f"{constant} of {len(stats)} NAM gates act as constants (spread within {tolerance:g}); "
                  "namprune export replaces those whose removal keeps the predictions")
    return [s.to_dict(tolerance) for s in stats]
