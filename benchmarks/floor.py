"""The most any recurrent layer could gain over torch.nn in `rnnkit bench`'s train step: the same step
with a layer that costs nothing (an autograd.Function that hands back ready zeros, forward and
backward, with the parameters of the real layer), interleaved in one process with rnnkit's fused
layer and torch.nn's. What is left in the free layer's step (head, loss, autograd's engine, zeroing,
Adam) every implementation pays, so torch.nn / free is the ceiling of the `x torch` column.

Column ``no dW``: the fused layer with its weight-gradient GEMMs after the loop (``torch.mm`` in
rnnkit.kernels.fused: dW_ih and dW_hh; dx is not asked for here) handing back ready zeros, so wrong
gradients: what moving those products into the loops could gain at most. (Since the eleventh pass
a small layer's loops make dW_hh themselves, with no ``torch.mm`` left to free: there ``no dW``
times the same as ``fused``.)

    .venv/bin/python benchmarks/floor.py                    # B32 T50 H32, the bench's small size
    .venv/bin/python benchmarks/floor.py --sizes 32x50x32,64x200x128 --threads 1
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from rnnkit.bench import _Model, _build, _time_interleaved, _train_jobs, parse_script_arguments, parse_sizes
from rnnkit.kernels import fused


class _Free(torch.autograd.Function):
    """Output and h_n of ready zeros; gradients of ready zeros for every parameter."""

    @staticmethod
    def forward(ctx, out, h_n, grads, *params):
        ctx.grads = grads
        return out, h_n

    @staticmethod
    def backward(ctx, d_out, d_h_n):
        return (None, None, None) + ctx.grads


class FreeLayer(nn.Module):
    """A stand-in for a batch-first recurrent layer, with its parameters, that computes nothing."""

    def __init__(self, like: nn.Module, B: int, T: int, H: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in like.parameters()])
        self.out, self.h_n = torch.zeros(B, T, H), torch.zeros(1, B, H)
        self.grads = tuple(torch.zeros_like(p) for p in self.weights)

    def forward(self, x):
        return _Free.apply(self.out, self.h_n, self.grads, *self.weights)


class _FreeProducts:
    """torch, as rnnkit.kernels.fused sees it, with ``mm`` handing back ready zeros."""

    def __init__(self) -> None:
        self._zeros: dict = {}

    def __getattr__(self, name):
        return getattr(torch, name)

    def mm(self, a, b):
        shape = (a.shape[0], b.shape[1])
        if shape not in self._zeros:
            self._zeros[shape] = torch.zeros(shape)
        return self._zeros[shape]


def _without_products(job):
    """``job`` run with the fused engine's weight-gradient products free (see the module docstring)."""
    free = _FreeProducts()

    def run():
        fused.torch = free
        try:
            job()
        finally:
            fused.torch = torch

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_script_arguments(parser)
    print(f"{torch.get_num_threads()} threads; train step in ms, median of {args.rounds} interleaved rounds")
    print(f"{'cell':<5} {'B':>4} {'T':>4} {'H':>4} {'free':>7} {'fused':>7} {'no dW':>7} {'torch':>7}  "
          f"{'torch/fused':>11} {'torch/no dW':>11} {'torch/free':>10}")
    for B, T, H in parse_sizes(args.sizes):
        x, y = torch.randn(B, T, 1), torch.randn(B, 1)
        for cell in args.cells.split(","):
            torch.manual_seed(0)
            models = {"fused": _build(cell, "fused", H, None)}
            models["torch"] = _build(cell, "torch", H, models["fused"])
            models["free"] = _Model(FreeLayer(models["fused"].rnn, B, T, H), H)
            models["no dW"] = _build(cell, "fused", H, models["fused"])
            jobs = _train_jobs(models, x, y)
            jobs["no dW"] = _without_products(jobs["no dW"])
            ms = {k: v * 1e3 for k, v in _time_interleaved(jobs, args.rounds, 0.06).items()}
            print(f"{cell:<5} {B:>4} {T:>4} {H:>4} {ms['free']:>7.3f} {ms['fused']:>7.3f} {ms['no dW']:>7.3f} "
                  f"{ms['torch']:>7.3f}  {ms['torch'] / ms['fused']:>11.2f} {ms['torch'] / ms['no dW']:>11.2f} "
                  f"{ms['torch'] / ms['free']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
