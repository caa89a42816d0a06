"""rnnkit's layers on a GPU: engine "torch" (cuDNN through torch's op, what "auto" takes there) and
the reference loop against torch.nn, for correctness and speed, in under 5 minutes on one GPU.

For each cell and size (batch, steps, hidden; input size 1, a Linear(H, 1) head on the last step, as
`rnnkit bench`) it checks the torch engine's and the reference loop's outputs, final states and
gradients against torch.nn's with the same weights (the largest difference, and whether the torch
engine's are bit for bit torch.nn's), and whether the torch engine's weights lie in one flat buffer
(no copy per call, as torch.nn's); then times a train step (forward, MSE, backward, Adam) and
inference (a forward under no_grad) of each, in interleaved rounds with the device synchronized
around each, and prints each time and torch.nn's time over it (> 1: faster than torch.nn).

    python benchmarks/gpu.py                        # CUDA (or ROCm) device 0, the default sizes
    python benchmarks/gpu.py --device cpu --quick   # on the CPU, small and fast: that it runs
    python benchmarks/gpu.py --json gpu.json        # also the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from rnnkit.bench import (CELLS, RNNKIT_LAYERS, _build, _infer_jobs, _Model, _time_interleaved, _train_jobs,
                          parse_cells, parse_sizes)

IMPLS = ("torch-engine", "reference", "torch.nn")
ENGINE = {"torch-engine": "torch", "reference": "reference"}
SIZES = "32x50x32,64x200x128,32x50x256,256x100x512"
QUICK_SIZES = "8x10x16"


def _models(cell: str, hidden: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    nn_model = _build(cell, "torch", hidden, None)  # (bench's "torch" is torch.nn)
    models = {}
    for impl, engine in ENGINE.items():
        models[impl] = _Model(RNNKIT_LAYERS[cell](1, hidden, batch_first=True, engine=engine), hidden)
        models[impl].load_state_dict(nn_model.state_dict())
    models["torch.nn"] = nn_model
    return {k: m.to(device) for k, m in models.items()}


def _check(models: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Each implementation's outputs, states and gradients against torch.nn's: the largest absolute
    difference, and whether they are equal bit for bit."""
    results = {}
    for name, model in models.items():
        model.zero_grad(set_to_none=True)
        out, state = model.rnn(x)
        states = state if isinstance(state, tuple) else (state,)
        torch.nn.functional.mse_loss(model.head(out[:, -1]), y).backward()
        results[name] = [out.detach(), *(s.detach() for s in states), *(p.grad for p in model.parameters())]
    want = results["torch.nn"]
    return {name: {"max_abs_diff": max(float((g - w).abs().max()) for g, w in zip(got, want)),
                   "bitwise": all(torch.equal(g, w) for g, w in zip(got, want))}
            for name, got in results.items() if name != "torch.nn"}


def _one_buffer(model) -> bool:
    """Whether the recurrent layer's weights are views of one storage (cuDNN's flat buffer)."""
    return len({p.untyped_storage().data_ptr() for p in model.rnn.parameters()}) == 1


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default; ROCm's too), cuda:N or cpu")
    parser.add_argument("--sizes", default=None, help=f"BATCHxSTEPSxHIDDEN[,...] (default: {SIZES})")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 3 short rounds")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu for the CPU)", file=sys.stderr)
        return 2
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    rounds, round_s = (3, 0.01) if args.quick else (args.rounds, 0.1)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    backend = ("ROCm " + torch.version.hip) if torch.version.hip else (
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if device.type == "cuda" else "")
    print(f"torch {torch.__version__}, {name} {backend}; ms, median of {rounds} interleaved rounds; "
          f"x nn = torch.nn's time / this row's")
    print(f"{'cell':<5} {'B':>4} {'T':>4} {'H':>4}  {'impl':<13} {'max |diff|':>10} {'bitwise':>7} "
          f"{'1 buffer':>8} {'train ms':>9} {'x nn':>6} {'infer ms':>9} {'x nn':>6}")
    rows = []
    for B, T, H in sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(B, T, 1, generator=gen).to(device)
        y = torch.randn(B, 1, generator=gen).to(device)
        for cell in parse_cells(args.cells):
            models = _models(cell, H, device)
            checks = _check(models, x, y)
            train = _time_interleaved(_train_jobs(models, x, y), rounds, round_s, clock, alternate=True)
            infer = _time_interleaved(_infer_jobs(models, x), rounds, round_s, clock, alternate=True)
            for impl in IMPLS:
                check = checks.get(impl, {"max_abs_diff": 0.0, "bitwise": True})
                row = {"cell": cell, "B": B, "T": T, "H": H, "impl": impl, **check,
                       "one_buffer": _one_buffer(models[impl]), "train_ms": train[impl] * 1e3,
                       "train_x_nn": train["torch.nn"] / train[impl], "infer_ms": infer[impl] * 1e3,
                       "infer_x_nn": infer["torch.nn"] / infer[impl]}
                rows.append(row)
                print(f"{cell:<5} {B:>4} {T:>4} {H:>4}  {impl:<13} {row['max_abs_diff']:>10.2e} "
                      f"{str(row['bitwise']):>7} {str(row['one_buffer']):>8} {row['train_ms']:>9.3f} "
                      f"{row['train_x_nn']:>6.2f} {row['infer_ms']:>9.3f} {row['infer_x_nn']:>6.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "backend": backend, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
