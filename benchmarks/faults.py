"""Page faults and time of the fused train step with the engine's big arrays kept between calls
(rnnkit.kernels.buffers) and without (every array from torch.empty). Whether glibc maps a big block
fresh from the system on each call depends on what the process allocated before, so each run is a
fresh process doing only this; the two modes alternate. Prints ms and page faults per step.

    .venv/bin/python benchmarks/faults.py                       # LSTM B32 T50 H256, 4 pairs
    .venv/bin/python benchmarks/faults.py --size 64x200x128 --cell gru --pairs 2
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def one_run(size: str, cell: str, kept: bool, steps: int) -> None:
    """The measured process: a few warm-up steps, then ``steps`` timed ones."""
    import torch

    from rnnkit.bench import _build, _train_step, parse_sizes
    from rnnkit.kernels import buffers

    if not kept:
        buffers.MIN_BYTES = 1 << 62
    (B, T, H), = parse_sizes(size)
    torch.manual_seed(0)
    x, y = torch.randn(B, T, 1), torch.randn(B, 1)
    model = _build(cell, "fused", H, None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    for _ in range(5):
        _train_step(model, opt, x, y)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(model, opt, x, y)
    ms = (time.perf_counter() - start) / steps * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    print(f"{'kept' if kept else 'torch.empty':12s} {ms:8.2f} ms/step {faults:8.0f} faults/step", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="32x50x256")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--one", choices=("kept", "torch.empty"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args.size, args.cell, args.one == "kept", args.steps)
        return
    print(f"{args.cell} {args.size}, {args.steps} train steps per fresh process")
    for _ in range(args.pairs):
        for mode in ("kept", "torch.empty"):
            subprocess.run([sys.executable, __file__, "--size", args.size, "--cell", args.cell,
                            "--steps", str(args.steps), "--one", mode], check=True)


if __name__ == "__main__":
    main()
