"""Cell comparison on the seed's combined wave: each cell trained by the forecasting pipeline
(:class:`rnnkit.Forecaster`, the defaults of `rnnkit train` unless overridden), then its test MSE in the
data's units (the seed's `Test MSE Loss`) and its training time.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import __version__
from ..errors import ConfigError
from .adding import LAYERS, check_cell

RESULTS = "compare.json"


def run_compare(cells: list[str] | tuple[str, ...] = tuple(LAYERS), progress: bool | None = None,
                out: str | Path | None = None, **settings) -> dict:
    """Train one :class:`~rnnkit.Forecaster` per cell, the same ``settings`` for each (any Forecaster
    setting: epochs, hidden_size, seed, num_samples, ...; None keeps the default), and evaluate it on
    the test split. Returns {"settings", "rows": [{"cell", "test_mse", "test_mae", "epochs",
    "train_time_s", "wall_time_s"}]}; with ``out``, also writes out/compare.json.
    """
    from ..forecaster import Forecaster

    cells = list(cells)
    if not cells:
        raise ConfigError(f"--cells needs at least one cell (use some of: {', '.join(LAYERS)})")
    for cell in cells:
        check_cell(cell)
    rows = []
    for cell in cells:
        t0 = time.perf_counter()
        f = Forecaster(cell=cell, **settings).fit(log=None, progress=progress)
        m = f.evaluate()
        rows.append({"cell": cell, "test_mse": m["mse"], "test_mae": m["mae"], "epochs": len(f.history["epoch"]),
                     "train_time_s": sum(f.history["time"]), "wall_time_s": time.perf_counter() - t0})
    results = {"experiment": "compare", "data": "combined",
               "settings": {k: v for k, v in settings.items() if v is not None},
               "torch_threads": torch.get_num_threads(), "rnnkit_version": __version__, "rows": rows}
    if out is not None:
        from ..runs import write_json

        write_json(Path(out) / RESULTS, results)
    return results


def table(results: dict) -> str:
    """The comparison as an aligned text table, one row per cell."""
    lines = [f"{'cell':<6}{'test MSE':>11}{'test MAE':>10}{'epochs':>8}{'train s':>9}"]
    lines += [f"{r['cell'].upper():<6}{r['test_mse']:>11.6f}{r['test_mae']:>10.5f}{r['epochs']:>8}"
              f"{r['train_time_s']:>9.1f}" for r in results["rows"]]
    return "\n".join(lines)
