"""The adding problem (Hochreiter & Schmidhuber 1997, as set up in Arjovsky, Shah & Bengio 2016).

Each sequence has T steps and two input channels: values ~ U[0, 1], and markers that are 0 except one
1 in the first half (t < T//2) and one 1 in the second half. The target is the sum of the two marked
values, read from the network's last step, scored by MSE. Always predicting 1 (the target's mean)
scores the target's variance, Var(U1 + U2) = 2/12 = 1/6 ≈ 0.167: a network that cannot carry a value
across ~T/2 steps stays there.

Model: an rnnkit.RNN / LSTM / GRU layer (batch-first, default engine) and a Linear(H, 1) head on the
last step's output. Training draws a fresh batch every step; the test set is fixed (its own seed, the
same for every cell and --seed) so runs are comparable.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import ConfigError
from ..layers import GRU, LSTM, RNN
from . import ADDING

LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
BASELINE_MSE = 1 / 6  # MSE of always predicting 1: Var(U1 + U2) for U ~ U[0, 1]
TEST_SEED = 2016  # the held-out set's generator seed (the paper's year), independent of --seed
RESULTS = "results.json"
PLOT = "learning_curve.png"


def adding_data(n: int, T: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """n adding-problem sequences of length T >= 2.

    Returns x (n, T, 2) float32 — channel 0 the values ~ U[0, 1], channel 1 the markers (one 1 at a
    step in [0, T//2), one at a step in [T//2, T)) — and y (n, 1), the sum of the two marked values.
    """
    check_T(T)
    values = torch.rand(n, T, generator=generator)
    half = T // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, T, (n,), generator=generator)
    rows = torch.arange(n)
    markers = torch.zeros(n, T)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)  # (n, 1)
    return torch.stack([values, markers], dim=2), y  # (n, T, 2)


def held_out_set(T: int, n: int) -> tuple[Tensor, Tensor]:
    """The fixed held-out set for length T: the same n sequences for every cell and seed."""
    return adding_data(n, T, torch.Generator().manual_seed(TEST_SEED))


class AddingModel(nn.Module):
    """An rnnkit recurrent layer (input 2, batch-first) and a Linear(H, 1) head on its last step.

    forward: x (B, T, 2) -> (B, 1).
    """

    def __init__(self, cell: str, hidden_size: int) -> None:
        super().__init__()
        check_cell(cell)
        self.cell = cell
        self.rnn = LAYERS[cell](2, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (B, T, H)
        return self.head(out[:, -1])  # (B, 1)


# ---- settings ----------------------------------------------------------------------------------

def check_cell(cell: str) -> None:
    if cell not in LAYERS:
        raise ConfigError(f"unknown cell {cell!r} (use one of: {', '.join(LAYERS)})")


def check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise ConfigError(f"--T must be an integer >= 2 (a marker in each half of the sequence), got {T!r}")


def check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def check_count(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


# ---- training ----------------------------------------------------------------------------------

@torch.no_grad()
def mse(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """MSE of the model over (x, y), in chunks."""
    model.eval()
    total = sum(nn.functional.mse_loss(model(xb), yb, reduction="sum").item()
                for xb, yb in zip(x.split(batch), y.split(batch)))
    model.train()
    return total / len(y)


def train(model: AddingModel, T: int, steps: int, batch_size: int = ADDING["batch_size"],
          lr: float = ADDING["lr"], clip_grad_norm: float = ADDING["clip_grad_norm"], seed: int = 0,
          test_size: int = 1000, evals: int = 50, progress: bool | None = None,
          log: Callable[[str], None] | None = None) -> dict:
    """Train ``model`` in place on fresh adding batches of length T for ``steps`` steps (Adam,
    gradient-norm clipping) and return its learning curve.

    The test MSE on the fixed held-out set (see :func:`held_out_set`) is measured before training and
    ``evals`` times along it; train_mse is the mean batch loss since the previous measurement.
    Returns {"step": [...], "train_mse": [...], "test_mse": [...], "train_time_s": seconds of
    training steps, "eval_time_s": seconds of test evaluation}.
    """
    from tqdm.auto import tqdm

    check_T(T)
    check_count("--steps", steps)
    check_count("--batch-size", batch_size)
    check_count("--test-size", test_size)
    check_count("--evals", evals)
    check_positive("--lr", lr)
    if isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, (int, float)) or not clip_grad_norm >= 0:
        raise ConfigError(f"--clip-grad-norm must be >= 0 (0: no clipping), got {clip_grad_norm!r}")
    x_test, y_test = held_out_set(T, test_size)
    data = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    measure_at = {round(steps * k / evals) for k in range(1, evals + 1)}
    curve: dict = {"step": [], "train_mse": [], "test_mse": []}
    seconds = {"train": 0.0, "eval": 0.0}

    def measure(step: int, losses: list[float]) -> float:
        t0 = time.perf_counter()
        test = mse(model, x_test, y_test)
        seconds["eval"] += time.perf_counter() - t0
        curve["step"].append(step)
        curve["train_mse"].append(sum(losses) / len(losses) if losses else None)
        curve["test_mse"].append(test)
        return test

    measure(0, [])
    losses: list[float] = []
    bar = tqdm(total=steps, desc=f"adding {model.cell} T={T}", unit="step", leave=False,
               disable=(not progress) if progress is not None else None)
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        x, y = adding_data(batch_size, T, data)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
        opt.step()
        losses.append(loss.item())
        seconds["train"] += time.perf_counter() - t0
        bar.update()
        if step in measure_at:
            test = measure(step, losses)
            bar.set_postfix(test_mse=f"{test:.4f}")
            if log is not None:
                with tqdm.external_write_mode():  # above the bar, not through it
                    log(f"step {step}/{steps}: train MSE {curve['train_mse'][-1]:.5f}, test MSE {test:.5f}")
            losses = []
    bar.close()
    model.eval()
    return {**curve, "train_time_s": seconds["train"], "eval_time_s": seconds["eval"]}


def run_adding(cell: str, T: int = 100, steps: int = ADDING["steps"], hidden_size: int = ADDING["hidden_size"],
               batch_size: int = ADDING["batch_size"], lr: float = ADDING["lr"],
               clip_grad_norm: float = ADDING["clip_grad_norm"], seed: int = 0, test_size: int = 1000,
               evals: int = 50, out: str | Path | None = None, progress: bool | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """Build an :class:`AddingModel` (weights seeded by ``seed``), train it (see :func:`train`) and
    return the results; with ``out``, also write out/results.json and out/learning_curve.png.

    Results: the settings, ``test_mse`` (final, on the fixed held-out set), ``baseline_mse`` (1/6) and
    ``test_baseline_mse`` (always predicting 1 on that set), ``first_step_below_0.01`` (the first
    measured step with test MSE < 0.01, or None), the times, and the learning curve under ``curve``.
    """
    check_cell(cell)
    check_count("--hidden-size", hidden_size)
    torch.manual_seed(seed)
    model = AddingModel(cell, hidden_size)
    t0 = time.perf_counter()
    curve = train(model, T, steps, batch_size, lr, clip_grad_norm, seed, test_size, evals, progress, log)
    wall = time.perf_counter() - t0
    _, y_test = held_out_set(T, test_size)
    below = [s for s, m in zip(curve["step"], curve["test_mse"]) if m < 0.01]
    results = {
        "experiment": "adding", "cell": cell, "T": T, "steps": steps, "hidden_size": hidden_size,
        "batch_size": batch_size, "optimizer": "adam", "lr": lr, "clip_grad_norm": clip_grad_norm,
        "seed": seed, "test_size": test_size, "test_seed": TEST_SEED,
        "test_mse": curve["test_mse"][-1], "baseline_mse": BASELINE_MSE,
        "test_baseline_mse": nn.functional.mse_loss(torch.ones_like(y_test), y_test).item(),
        "first_step_below_0.01": below[0] if below else None,
        "wall_time_s": wall, "train_time_s": curve.pop("train_time_s"), "eval_time_s": curve.pop("eval_time_s"),
        "torch_threads": torch.get_num_threads(), "rnnkit_version": __version__, "curve": curve,
    }
    if out is not None:
        from ..runs import write_json

        write_json(Path(out) / RESULTS, results)
        plot_learning_curves([results], Path(out) / PLOT)
    return results


def plot_learning_curves(results: list[dict], path: str | Path) -> Path:
    """Test MSE (solid) and train MSE (faint) against training step of one or more adding runs, log
    scale, with the constant-1 baseline (1/6) and the 0.01 target."""
    from ..visualize import _figure, _save

    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for r in results:
        c = r["curve"]
        line, = ax.plot(c["step"], c["test_mse"], linewidth=2, label=f"{r['cell'].upper()} test")
        ax.plot(c["step"][1:], c["train_mse"][1:], color=line.get_color(), alpha=0.35, linewidth=1)
    ax.axhline(BASELINE_MSE, color="gray", linestyle="--", label="predict 1 (MSE 1/6)")
    ax.axhline(0.01, color="gray", linestyle=":", label="0.01")
    Ts = sorted({r["T"] for r in results})
    ax.set(title=f"Adding problem, T={', '.join(map(str, Ts))} (faint: train MSE)", xlabel="training step",
           ylabel="MSE", yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
