"""The pointwise functions a cell's step is written with, for both engines.

Called on tensors (the reference loop, and a pointwise cell's reference step) they are torch's own
functions. In compiled code (the fused engine) :mod:`rnnkit.kernels.expmath` registers its own
implementations for them, computed in the data's dtype (float32 stays float32) and written so that
the gate loops vectorize. This module imports no compiler, so that a cell's definition does not
either.
"""

from __future__ import annotations

import torch


def sigmoid(a):
    """1 / (1 + exp(-a))."""
    return torch.sigmoid(a)


def tanh(a):
    """tanh(a)."""
    return torch.tanh(a)


def relu(a):
    """max(a, 0)."""
    return torch.relu(a)


__all__ = ["relu", "sigmoid", "tanh"]
