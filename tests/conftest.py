"""Shared fixtures and helpers for the recurrent-core oracles (torch.nn is the reference)."""

import os

# The Triton engine's kernels run in Triton's interpreter on CPU tensors here (tests/test_triton.py).
# Triton reads this when it defines a kernel, its own library's included: before anything imports it
# (torch.compile may).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from rnnkit.layers import ENGINES  # noqa: E402

# Every engine of the CPU, then "auto" (what users get), so the tests keep holding as engines are
# added; "triton" (GPU cells) has tests/test_triton.py.
ENGINES_UNDER_TEST = [e for e in ENGINES if e not in ("auto", "triton")] + ["auto"]

DOUBLE = torch.float64


@pytest.fixture(scope="module")
def single_thread():
    """The oracles run thousands of tiny ops: intra-op threads only add contention (several times
    slower on a busy 2-core machine), so those modules run single-threaded and restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=ENGINES_UNDER_TEST)
def engine(request) -> str:
    return request.param


def assert_close(actual, expected) -> None:
    """float64 agreement to 1e-10 absolute (the contract with torch.nn)."""
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)


def cotangent(t: torch.Tensor) -> torch.Tensor:
    """A fixed random weighting of an output, the same for every model given the same shape, so
    sum(output * cotangent) pulls a different gradient out of every element."""
    return torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(1234))


def param_grads(model: torch.nn.Module) -> dict:
    return {name: p.grad for name, p in model.named_parameters()}
