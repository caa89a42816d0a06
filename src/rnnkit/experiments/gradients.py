"""Gradient flow: how much of a last-step loss reaches each earlier hidden state.

For a loss L at the last step of an adding-problem sequence, ||dL/dh_t|| against t shows how far back
a training signal travels: in a tanh RNN it shrinks geometrically (the vanishing gradient), so the
early marked value cannot be learned; an LSTM's cell state and a GRU's gated update can keep it.

The hidden states are taken from the reference time loop itself: the layer's own step function
(:func:`rnnkit.layers.step_function`, the equations of :mod:`rnnkit.cells`) applied to its own weights
one step at a time, so every h_t is a node of the graph and ``torch.autograd.grad`` returns dL/dh_t.
It runs in float64 so the smallest norms (1e-30 and below) do not underflow.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..errors import ConfigError
from ..layers import step_function
from . import ADDING, GRADIENTS
from .adding import LAYERS, AddingModel, adding_data, check_cell, check_count, check_T, train

RESULTS = "results.json"
PLOT = "gradient_flow.png"
PROBE_SEED = 7  # the sequences the gradients are measured on, the same for every cell


def hidden_grad_norms(model: AddingModel, x: Tensor, y: Tensor) -> np.ndarray:
    """||dL/dh_t|| for t = 1..T, averaged over the batch, for L = (prediction - y)^2 at the last step.

    Each sequence's own loss (a sum over the batch, not a mean), so row b of dL/dh_t is sequence b's
    gradient. x (B, T, 2), y (B, 1) -> (T,) float64. The model is copied to float64; it is unchanged.
    """
    m = copy.deepcopy(model).double()
    layer = m.rnn
    step = step_function(layer.kind, layer.nonlinearity, layer.reset_after)
    weights = layer.layer_weights(0, 0)
    x, y = x.double(), y.double()
    B, T = x.shape[0], x.shape[1]
    state = tuple(x.new_zeros(B, layer.hidden_size) for _ in range(2 if layer.kind == "lstm" else 1))
    hs = []
    for t in range(T):
        state = step(x[:, t], state, *weights)
        hs.append(state[0])
    loss = ((m.head(hs[-1]) - y) ** 2).sum()
    grads = torch.autograd.grad(loss, hs)
    return torch.stack([g.norm(dim=1).mean() for g in grads]).numpy()  # (T,)


def run_gradients(cells: list[str] | tuple[str, ...] = tuple(LAYERS), T: int = GRADIENTS["T"],
                  steps: int = GRADIENTS["steps"], hidden_size: int = GRADIENTS["hidden_size"],
                  batch_size: int = ADDING["batch_size"], lr: float = ADDING["lr"], seed: int = 0,
                  probe_size: int = 100, out: str | Path | None = None, progress: bool | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """For each cell: ||dL/dh_t|| at initialization, then after ``steps`` adding-problem training steps
    (see :func:`rnnkit.experiments.adding.train`), on the same ``probe_size`` sequences.

    Returns {"T", "steps", ..., "cells": {cell: {"init": [T norms], "trained": [T norms],
    "test_mse", "ratio_init", "ratio_trained"}}} where ratio = ||dL/dh_1|| / ||dL/dh_T||, how much of
    the last step's gradient reaches the first step. With ``out``: out/results.json and
    out/gradient_flow.png.
    """
    cells = list(cells)
    if not cells:
        raise ConfigError(f"--cells needs at least one cell (use some of: {', '.join(LAYERS)})")
    for cell in cells:
        check_cell(cell)
    check_T(T)
    check_count("--steps", steps)
    check_count("--hidden-size", hidden_size)
    check_count("--probe-size", probe_size)
    x, y = adding_data(probe_size, T, torch.Generator().manual_seed(PROBE_SEED))
    t0 = time.perf_counter()
    per_cell = {}
    for cell in cells:
        torch.manual_seed(seed)
        model = AddingModel(cell, hidden_size)
        init = hidden_grad_norms(model, x, y)
        test = train(model, T, steps, batch_size, lr, seed=seed, progress=progress, evals=1)["test_mse"][-1]
        trained = hidden_grad_norms(model, x, y)
        per_cell[cell] = {"init": init.tolist(), "trained": trained.tolist(), "test_mse": test,
                          "ratio_init": float(init[0] / init[-1]), "ratio_trained": float(trained[0] / trained[-1])}
        if log is not None:
            log(f"{cell}: ||dL/dh_1|| / ||dL/dh_T|| = {per_cell[cell]['ratio_init']:.3g} at init, "
                f"{per_cell[cell]['ratio_trained']:.3g} after {steps} steps (test MSE {test:.4f})")
    results = {"experiment": "gradients", "T": T, "steps": steps, "hidden_size": hidden_size,
               "batch_size": batch_size, "optimizer": "adam", "lr": lr, "seed": seed, "probe_size": probe_size,
               "probe_seed": PROBE_SEED, "wall_time_s": time.perf_counter() - t0,
               "torch_threads": torch.get_num_threads(), "rnnkit_version": __version__, "cells": per_cell}
    if out is not None:
        from ..runs import write_json

        write_json(Path(out) / RESULTS, results)
        plot_gradient_flow(results, Path(out) / PLOT)
    return results


FLOOR = 1e-30  # the plot's lower edge: a tanh RNN's trained gradient reaches 1e-100 and exact zeros


def plot_gradient_flow(results: dict, path: str | Path) -> Path:
    """Two panels, at initialization and after training: ||dL/dh_t|| / ||dL/dh_T|| against t (log
    scale), one line per cell, for a loss at the last step T; values below 1e-30 lie on the lower edge."""
    from ..visualize import _figure, _save

    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    T = results["T"]
    t = np.arange(1, T + 1)
    for ax, when, title in zip(axes, ("init", "trained"),
                               ("at initialization", f"after {results['steps']} training steps")):
        for cell, r in results["cells"].items():
            norms = np.asarray(r[when])
            label = cell.upper() + (f" (test MSE {r['test_mse']:.2g})" if when == "trained" else "")
            ax.plot(t, np.maximum(norms / norms[-1], FLOOR), linewidth=2, label=label)
        ax.set(title=title, xlabel="time step t (loss at t = T)", yscale="log", ylim=(FLOOR / 3, 10))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel(f"||dL/dh_t|| / ||dL/dh_T||  (adding, T={T})")
    return _save(fig, path)
