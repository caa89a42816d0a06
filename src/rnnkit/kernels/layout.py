"""The block: the one structure through which Python hands a compiled loop its arguments.

A loop runs as a compiled *body* with one argument, the address of an int64 block (see
:mod:`rnnkit.kernels.build`). This module names every slot of it, and every other side (the body
that reads it, :mod:`rnnkit.kernels.fused` that fills it, the tests) goes through these names: no
offset is written by hand anywhere else. A block is made once per kept call (its shapes fixed) and
pointed at each call's arrays (:meth:`Block.point`).

Layout (int64 slots): the header (:data:`HEADER`, fixed slots); the arrays of the loop
(:data:`FORWARD` or :data:`BACKWARD`: an address and four dimensions each, unused ones 1); then, at
``shards_at``, the shards (n x 4: b0, b1, j0, j1) and the unit edges (n + 1); then, at ``state_at``
on a cache line of its own, the per-call state (:data:`STATE`, then each shard's next unclaimed
phase), cleared before each launch.

Each shard's loop also gets scratch memory of its own (a region of ``scratch_stride`` bytes at
``scratch + shard * scratch_stride``; :func:`scratch_layout` lays the region out, its offsets in the
header), so that the compiled loops allocate nothing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

# Header slots, by name (the values are their positions).
HEADER = (
    "length",          # the block's length in slots
    "op",              # FORWARD_OP or BACKWARD_OP
    "reverse",         # 1 for the reverse direction
    "parties",         # threads that share each step's tasks (unit shards), else 1
    "shards",          # the number of shards
    "shards_at",       # where the shards, the unit edges and the claims start
    "gemm",            # address of the BLAS ?gemm_ (products too big to pack)
    "set_threads",     # address of MKL's MKL_Set_Num_Threads_Local, or 0
    "state_at",        # where the per-call state starts (STATE, then each shard's next unclaimed phase)
    "fail_shard",      # (tests) the shard whose thread raises: at its start, or in the task of fail_phase
    "fail_phase",      # (tests) -1: at the shard's start
    "sched_yield",     # address of sched_yield
    "time",            # address of time
    "wait_limit",      # seconds a wait polls without a task done before it gives up
    "scratch",         # address of the shards' scratch regions
    "scratch_stride",  # bytes per shard
    "products",        # how the backward's products read W_hh: PACKED, DIRECT or THROUGH_BLAS
    "units",           # the widest shard's units
    "rows",            # the tallest shard's rows
    "project",         # 1 where the forward loop projects x itself (one input feature, one party)
    # addresses of the product entry points of the data's dtype (rnnkit.kernels.products.ENTRIES)
    "mm", "packed_mm", "pack_rows", "pack_columns", "weights_product",
)
# The per-call state, cleared before each launch, on cache lines of its own at the block's end:
# the next shard a thread takes, the status, the tasks done, then each shard's next unclaimed phase.
STATE = ("next_shard", "status", "done")
FORWARD_OP, BACKWARD_OP = 0, 1
# How the loops' products read W_hh (the "products" slot): packed once per call by each thread into
# strips for the micro-kernel (rnnkit.kernels.products); in place, for the backward's products with
# a W_hh within DIRECT_BYTES and shallower than a depth chunk (packing costs more than it saves
# there); through BLAS, for a W_hh over PACKED_MAX_BYTES (the packed loops are not measured past it).
PACKED, DIRECT, THROUGH_BLAS = 0, 1, 2
PACKED_MAX_BYTES = 16 * 1024 * 1024
DIRECT_BYTES = 64 * 1024
PACKED_DEPTH = 256  # the micro-kernel's depth chunk (rnnkit.kernels.products)
STARTS = 64  # uint64 slots of a shard's "starts" scratch: at least a packing strip's width
# status: what went wrong in a thread (the caller raises rnnkit.kernels.launch.WorkerError)
OK, RAISED, WAITED_TOO_LONG = 0, 1, 2
# The tasks-done count of a call whose waits all return at once (a party failed, or a wait gave up)
ABORTED = 1 << 62


class Array(NamedTuple):
    name: str
    ndim: int
    integer: bool = False  # int64 (else the data's float dtype)


# The arrays of each loop, in their order in the block (rnnkit.kernels.loops documents each).
FORWARD = (
    Array("xp", 3), Array("hs", 3), Array("cs", 3), Array("acts", 3), Array("W_hh", 2), Array("b_hh", 1),
    Array("lengths", 1, True), Array("x", 3), Array("W_ih", 2), Array("b_ih", 1), Array("h_init", 2),
    Array("c_init", 2), Array("params", 2),
)
BACKWARD = (
    Array("dy", 3), Array("dh", 2), Array("dc", 2), Array("hs", 3), Array("cs", 3), Array("xp", 3),
    Array("acts", 3), Array("W_hh", 2), Array("lengths", 1, True), Array("dG", 3), Array("grec", 3),
    Array("dan", 2), Array("drh", 2), Array("h_prev", 3), Array("x", 3), Array("sums", 2),
    Array("dh_n", 2), Array("dc_n", 2), Array("slot", 1, True), Array("params", 2),
)
ARRAYS = {FORWARD_OP: FORWARD, BACKWARD_OP: BACKWARD}
_ARRAY_SLOTS = 5  # address and four dimensions


# Each shard's scratch: regions of the data's dtype (floats) and of int64 (ints), by name; the
# header holds each one's offset (in its own elements) after the fixed slots.
FLOAT_SCRATCH = ("rec", "shared", "proj", "packed", "scal")
INT_SCRATCH = ("ready", "starts", "ws")
SCRATCH = tuple(f"s_{n}" for n in FLOAT_SCRATCH + INT_SCRATCH) + ("s_ints",)  # s_ints: the ints' byte offset

SLOTS = {name: i for i, name in enumerate(HEADER + SCRATCH)}
ARRAYS_AT = len(HEADER) + len(SCRATCH)
STATE_SLOTS = {name: i for i, name in enumerate(STATE)}  # (from state_at)


def array_slot(op: int, name: str) -> int:
    """The slot of an array's address in an ``op`` block (its dimensions follow)."""
    return ARRAYS_AT + _ARRAY_SLOTS * [a.name for a in ARRAYS[op]].index(name)


class ScratchLayout(NamedTuple):
    offsets: dict  # region name -> offset in its elements (floats or ints), and s_ints in bytes
    stride: int  # bytes per shard


_ALIGN = 64  # bytes: each region starts on a cache line


def scratch_layout(sizes: dict, itemsize: int) -> ScratchLayout:
    """Lay out one shard's scratch: ``sizes`` maps each region of FLOAT_SCRATCH and INT_SCRATCH to
    its length in elements."""
    offsets, at = {}, 0
    for name in FLOAT_SCRATCH:
        offsets[f"s_{name}"] = at // itemsize
        at += -(-sizes.get(name, 0) * itemsize // _ALIGN) * _ALIGN
    ints = at
    for name in INT_SCRATCH:
        offsets[f"s_{name}"] = (at - ints) // 8
        at += -(-sizes.get(name, 0) * 8 // _ALIGN) * _ALIGN
    offsets["s_ints"] = ints
    return ScratchLayout(offsets, max(at, _ALIGN))


class Block:
    """An int64 block of one loop over arrays of fixed shapes, cache-line aligned: its slots by name
    (``block["units"] = 16``), its arrays pointed at a call's (:meth:`point`)."""

    __slots__ = ("array", "address", "addresses", "state", "status_at", "op")

    def __init__(self, op: int, shapes: dict, shards: tuple, parties: int) -> None:
        arrays = ARRAYS[op]
        n = len(shards)
        shards_at = ARRAYS_AT + _ARRAY_SLOTS * len(arrays)
        state_at = -(-(shards_at + 5 * n + 1) // 8) * 8  # (a cache line of its own)
        length = state_at + len(STATE) + n
        raw = np.zeros(length + _ALIGN // 8, np.int64)
        start = (-raw.ctypes.data % _ALIGN) // 8
        self.array = block = raw[start:start + length]
        self.address = block.ctypes.data
        self.op = op
        block[SLOTS["length"]], block[SLOTS["op"]], block[SLOTS["parties"]] = length, op, parties
        block[SLOTS["shards"]], block[SLOTS["shards_at"]], block[SLOTS["state_at"]] = n, shards_at, state_at
        block[SLOTS["fail_shard"]] = block[SLOTS["fail_phase"]] = -1
        for k, a in enumerate(arrays):
            shape = tuple(shapes[a.name])
            assert len(shape) == a.ndim, (a.name, shape)
            at = ARRAYS_AT + _ARRAY_SLOTS * k
            block[at + 1:at + 5] = shape + (1,) * (4 - a.ndim)
        block[shards_at:shards_at + 4 * n] = np.array(shards, np.int64).ravel()
        edges = [s[2] for s in shards] + [shards[-1][3]]
        block[shards_at + 4 * n:shards_at + 5 * n + 1] = edges
        # (views that each call writes through: one numpy assignment each)
        self.addresses = block[ARRAYS_AT:shards_at:_ARRAY_SLOTS]
        self.state = block[state_at:]
        self.status_at = state_at + STATE_SLOTS["status"]

    def __setitem__(self, name: str, value: int) -> None:
        self.array[SLOTS[name]] = value

    def __getitem__(self, name: str) -> int:
        return int(self.array[SLOTS[name]])

    def point(self, addresses: list) -> None:
        """Point the block at a call's arrays (addresses in the loop's order) and clear the
        per-call state, before a launch."""
        self.addresses[:] = addresses
        self.state[:] = 0

    @property
    def status(self) -> int:
        """What the threads reported (OK, RAISED, WAITED_TOO_LONG)."""
        return self.array[self.status_at]


def nbytes(shapes: dict, op: int, itemsize: int) -> int:
    """The bytes of a loop's float arrays of these shapes (for the kept calls' budget)."""
    return sum(math.prod(shapes[a.name]) * (8 if a.integer else itemsize) for a in ARRAYS[op])
