"""Whether this tree's fused engine gives the bits a git revision's gives: outputs, final states,
every gradient and inference, for every cell of torch.nn's, float32 and float64, one and several
input features, both directions, packed lengths, at sizes that take one thread and row shards (and,
with --units, unit shards). Both versions in one process, as benchmarks/ab.py loads them.

    .venv/bin/python benchmarks/same_bits.py 99d916a
"""

from __future__ import annotations

import argparse
import importlib
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from ab import export

CELLS = {"rnn": ("RNN", {}), "rnn-relu": ("RNN", {"nonlinearity": "relu"}), "lstm": ("LSTM", {}),
         "gru": ("GRU", {}), "gru-reset-before": ("GRU", {"reset_after": False})}


def _results(layer, x, lengths):
    inputs = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False) if lengths is not None else x
    out, state = layer(inputs)
    out = out.data if lengths is not None else out
    states = list(state) if isinstance(state, tuple) else [state]
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(t.dtype)).sum() for t in [out] + states)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    with torch.no_grad():
        inferred = layer(inputs)[0]
    return [out, *states, *grads, inferred.data if lengths is not None else inferred]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev")
    parser.add_argument("--units", action="store_true", help="also force unit shards on two threads")
    args = parser.parse_args()
    sys.path.insert(0, str(export(args.rev)))
    other = importlib.import_module("rnnkit_ab")
    cases, differ = 0, []
    sizes = [(4, 7, 3, 5, 1, False, False), (3, 9, 1, 20, 2, True, True), (32, 50, 1, 32, 1, False, False),
             (16, 12, 3, 64, 1, True, False), (32, 20, 1, 256, 1, False, True)]
    for name, (cls, extra) in CELLS.items():
        for dtype in (torch.float32, torch.float64):
            for B, T, I, H, layers, bidirectional, packed in sizes:
                torch.manual_seed(0)
                ours = getattr(rnnkit, cls)(I, H, layers, batch_first=True, bidirectional=bidirectional, dtype=dtype,
                                            engine="fused", **extra)
                theirs = getattr(other, cls)(I, H, layers, batch_first=True, bidirectional=bidirectional,
                                             dtype=dtype, engine="fused", **extra)
                theirs.load_state_dict(ours.state_dict())
                x = torch.randn(B, T, I, dtype=dtype, requires_grad=True)
                lengths = torch.randint(1, T + 1, (B,)) if packed else None
                if lengths is not None:
                    lengths[0] = T
                a, b = _results(ours, x, lengths), _results(theirs, x, lengths)
                cases += 1
                bad = [k for k, (p, q) in enumerate(zip(a, b)) if not torch.equal(p, q)]
                if bad:
                    differ.append((name, str(dtype), (B, T, I, H, layers, bidirectional, packed), bad,
                                   max((a[k] - b[k]).abs().max().item() for k in bad)))
    print(f"{cases} cases, {len(differ)} differ")
    for d in differ:
        print("  ", *d)


if __name__ == "__main__":
    main()
