"""rnnkit's layers on a GPU: engine "torch" (cuDNN through torch's op, what "auto" takes there),
engine "triton" (rnnkit.triton_engine: what "auto" takes for the cells cuDNN lacks) and the reference
loop against torch.nn, for correctness and speed, in under 5 minutes on one GPU.

For each cell and size (batch, steps, hidden; input size 1, a Linear(H, 1) head on the last step, as
`rnnkit bench`) it checks each engine's outputs, final states and gradients against an oracle with
the same weights (torch.nn's; for ``gru_rb``, the GRU with the reset gate before the product, which
torch.nn lacks, the reference loop's), the largest difference, and whether they are equal bit for
bit; whether the torch engine's weights lie in one flat buffer (no copy per call, as torch.nn's);
then times a train step (forward, MSE, backward, Adam) and inference (a forward under no_grad) of
each, in interleaved rounds with the device synchronized around each, and prints each time, torch.nn's
time over it and the reference loop's time over it (> 1: faster). For ``gru_rb`` the torch.nn row is
cuDNN's nearest configuration, its reset-after GRU.

    python benchmarks/gpu.py                        # CUDA (or ROCm) device 0, the default sizes
    python benchmarks/gpu.py --device cpu --quick   # on the CPU, small and fast: that it runs
    python benchmarks/gpu.py --json gpu.json        # also the numbers as JSON

On the CPU the triton engine runs in Triton's interpreter (TRITON_INTERPRET=1, set here), one
program at a time: a check that it runs, not a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from rnnkit import triton_engine
from rnnkit.bench import (RNNKIT_LAYERS, _build, _infer_jobs, _Model, _time_interleaved, _train_jobs,
                          parse_sizes)

IMPLS = ("torch-engine", "triton", "reference", "torch.nn")
ENGINE = {"torch-engine": "torch", "triton": "triton", "reference": "reference"}
# cell -> (the layer, its arguments beyond torch.nn's defaults)
CELLS = {"rnn": ("rnn", {}), "gru": ("gru", {}), "lstm": ("lstm", {}), "gru_rb": ("gru", {"reset_after": False})}
SIZES = "32x50x32,64x200x128,32x50x256,256x100x512"
QUICK_SIZES = "8x10x16"


def _models(cell: str, hidden: int, device: torch.device, triton: bool) -> dict:
    """Each implementation of ``cell`` with the same weights: the rnnkit engines that run it (no
    torch engine for gru_rb, no triton engine without Triton) and torch.nn's layer."""
    kind, extra = CELLS[cell]
    torch.manual_seed(0)
    nn_model = _build(kind, "torch", hidden, None)  # (bench's "torch" is torch.nn)
    models = {}
    for impl, engine in ENGINE.items():
        if (engine == "torch" and extra) or (engine == "triton" and not triton):
            continue
        models[impl] = _Model(RNNKIT_LAYERS[kind](1, hidden, batch_first=True, engine=engine, **extra), hidden)
        models[impl].load_state_dict(nn_model.state_dict())
    models["torch.nn"] = nn_model
    return {k: m.to(device) for k, m in models.items()}


def _check(models: dict, x: torch.Tensor, y: torch.Tensor, oracle: str) -> dict:
    """Each implementation's outputs, states and gradients against the oracle's: the largest absolute
    difference, and whether they are equal bit for bit."""
    results = {}
    for name, model in models.items():
        model.zero_grad(set_to_none=True)
        out, state = model.rnn(x)
        states = state if isinstance(state, tuple) else (state,)
        torch.nn.functional.mse_loss(model.head(out[:, -1]), y).backward()
        results[name] = [out.detach(), *(s.detach() for s in states), *(p.grad for p in model.parameters())]
    want = results[oracle]
    return {name: {"max_abs_diff": max(float((g - w).abs().max()) for g, w in zip(got, want)),
                   "bitwise": all(torch.equal(g, w) for g, w in zip(got, want))}
            for name, got in results.items() if name != oracle and (oracle == "torch.nn" or name != "torch.nn")}


def _one_buffer(model) -> bool:
    """Whether the recurrent layer's weights are views of one storage (cuDNN's flat buffer)."""
    return len({p.untyped_storage().data_ptr() for p in model.rnn.parameters()}) == 1


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default; ROCm's too), cuda:N or cpu")
    parser.add_argument("--sizes", default=None, help=f"BATCHxSTEPSxHIDDEN[,...] (default: {SIZES})")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"among {', '.join(CELLS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 3 short rounds")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu for the CPU)", file=sys.stderr)
        return 2
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if not cells or any(c not in CELLS for c in cells):
        print(f"error: --cells wants a comma-separated list among {', '.join(CELLS)}, got {args.cells!r}",
              file=sys.stderr)
        return 2
    triton = triton_engine.installed()
    if device.type == "cpu" and triton:
        os.environ["TRITON_INTERPRET"] = "1"  # (before the first call imports the kernels)
    rounds, round_s = (3, 0.01) if args.quick else (args.rounds, 0.1)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    backend = ("ROCm " + torch.version.hip) if torch.version.hip else (
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if device.type == "cuda" else "")
    print(f"torch {torch.__version__}, {name} {backend}; triton "
          f"{__import__('triton').__version__ if triton else 'not installed'}; ms, median of {rounds} interleaved "
          f"rounds; x nn, x ref = torch.nn's, the reference loop's time / this row's")
    print(f"{'cell':<6} {'B':>4} {'T':>4} {'H':>4}  {'impl':<13} {'max |diff|':>10} {'bitwise':>7} "
          f"{'1 buffer':>8} {'train ms':>9} {'x nn':>6} {'x ref':>6} {'infer ms':>9} {'x nn':>6} {'x ref':>6}")
    rows = []
    for B, T, H in sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(B, T, 1, generator=gen).to(device)
        y = torch.randn(B, 1, generator=gen).to(device)
        for cell in cells:
            models = _models(cell, H, device, triton)
            oracle = "reference" if CELLS[cell][1] else "torch.nn"
            checks = _check(models, x, y, oracle)
            train = _time_interleaved(_train_jobs(models, x, y), rounds, round_s, clock, alternate=True)
            infer = _time_interleaved(_infer_jobs(models, x), rounds, round_s, clock, alternate=True)
            for impl in (i for i in IMPLS if i in models):
                check = checks.get(impl, {"max_abs_diff": 0.0, "bitwise": True} if impl == oracle else
                                   {"max_abs_diff": None, "bitwise": None})
                row = {"cell": cell, "B": B, "T": T, "H": H, "impl": impl, "oracle": oracle, **check,
                       "one_buffer": _one_buffer(models[impl]), "train_ms": train[impl] * 1e3,
                       "train_x_nn": train["torch.nn"] / train[impl], "train_x_ref": train["reference"] / train[impl],
                       "infer_ms": infer[impl] * 1e3, "infer_x_nn": infer["torch.nn"] / infer[impl],
                       "infer_x_ref": infer["reference"] / infer[impl]}
                rows.append(row)
                diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2e}"
                print(f"{cell:<6} {B:>4} {T:>4} {H:>4}  {impl:<13} {diff:>10} {str(row['bitwise']):>7} "
                      f"{str(row['one_buffer']):>8} {row['train_ms']:>9.3f} {row['train_x_nn']:>6.2f} "
                      f"{row['train_x_ref']:>6.2f} {row['infer_ms']:>9.3f} {row['infer_x_nn']:>6.2f} "
                      f"{row['infer_x_ref']:>6.2f}", flush=True)
    for row in rows:  # the triton engine's targets (issue #27): >= 20x the reference loop at B64 T200 H128,
        # >= 0.5x cuDNN's reset-after GRU at H <= 256 for the reset-before GRU
        if row["impl"] == "triton" and ((row["B"], row["T"], row["H"]) == (64, 200, 128)
                                        or (row["cell"] == "gru_rb" and row["H"] <= 256)):
            print(f"target {row['cell']} {row['B']}x{row['T']}x{row['H']}: train {row['train_x_ref']:.1f}x the "
                  f"reference loop, {row['train_x_nn']:.2f}x torch.nn; inference {row['infer_x_ref']:.1f}x, "
                  f"{row['infer_x_nn']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "backend": backend, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
