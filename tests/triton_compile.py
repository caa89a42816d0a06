"""Compile every variant of rnnkit's Triton kernels that rnnkit.triton_engine launches, with Triton's
real compiler (to PTX and, with its own ptxas, a cubin) for a CUDA target: no GPU needed, and none
of the interpreter's leniency (globals, types, what the language has). Run by tests/test_triton.py
in a process of its own, without TRITON_INTERPRET.

    python tests/triton_compile.py [ARCH, default 90]   # prints one line per variant, exits 1 on a failure

Each line also gives the registers a thread uses and the bytes it spills to local memory, which
ptxas reports: the tiles and warps (rnnkit.triton_engine.launch_options) are chosen to keep the
loops in registers, and the test holds the spills to a few bytes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from rnnkit import triton_engine  # noqa: E402
from rnnkit import triton_kernels as tk  # noqa: E402
from rnnkit import triton_pointwise  # noqa: E402
from rnnkit.kernels import cells  # noqa: E402
from test_new_cells import MGU  # noqa: E402  (a user's cell, from this directory)

INTS = {"rec_row", "B", "T", "H", "t0", "steps", "s0"}


def variants():
    """(name, dtype, kernel, its constants and num_warps) of every launch rnnkit.triton_engine
    makes, as launch_options chooses them, in float32 with lengths: the built-in cells' loops holding
    W_hh (H=32), reading it (H=128) and one step at a time (H=512); the loops made for the pointwise
    cells (the peephole LSTM, IndRNN, and a user's minimal gated unit); and one of each kind in
    float64 without lengths."""
    for name, (code, G) in tk.CELLS.items():
        before = name == "gru_reset_before"
        NK = 2 if before else G
        for dtype, lengths in (("fp32", True),) + ((("fp64", False),) if before else ()):
            for H, persistent in ((32, True), (128, True), (512, False)) if dtype == "fp32" else ((32, True),):
                common = dict(triton_engine.launch_options(H, G, persistent), CELL=code, G=G, HAS_LENGTHS=lengths,
                              PREC="ieee", REC=not persistent)
                for phase in [0] if persistent or not before else [1, 2]:
                    yield name, dtype, tk.forward_kernel, dict(common, PHASE=phase)
                for phase in [0] if persistent else ([1, 2] if before else [1]):
                    yield name, dtype, tk.backward_kernel, dict(common, NK=NK, PHASE=phase)
    for cell in (cells.get("peephole_lstm"), cells.get("indrnn"), MGU):
        made = triton_pointwise.module(cell)
        for dtype, lengths in (("fp32", True),) + ((("fp64", False),) if cell is MGU else ()):
            common = dict(triton_engine.launch_options(64, cell.gates, True, pointwise=True), HAS_LENGTHS=lengths,
                          PREC="ieee")
            yield cell.name, dtype, made.forward_kernel, common
            yield cell.name, dtype, made.backward_kernel, common


def compile_one(kernel, dtype: str, constants: dict, arch: int):
    """``kernel`` compiled for sm_``arch`` (constants: its constexprs and num_warps)."""
    constants = dict(constants)
    warps = constants.pop("num_warps")
    signature = {}
    for arg in kernel.arg_names:
        if arg in constants:
            signature[arg] = "constexpr"
        elif arg == "lengths":
            signature[arg] = "*i64"
        else:
            signature[arg] = "i32" if arg in INTS else f"*{dtype}"
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def registers(ptx: str, arch: int) -> tuple[int, int]:
    """(registers a thread, bytes it spills) of the PTX, as Triton's own ptxas reports them."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        log = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a" if arch >= 90 else f"--gpu-name=sm_{arch}",
                              f.name, "-o", os.devnull], capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    return int(re.search(r"Used (\d+) registers", log).group(1)), int(re.search(r"(\d+) bytes spill stores", log).group(1))


def _one(job: tuple) -> str:
    """One variant (an index into variants()) compiled: its line of the report."""
    index, arch = job
    name, dtype, kernel, constants = list(variants())[index]
    t0 = time.perf_counter()
    label = (f"{name} {dtype} {kernel.fn.__name__} REC={constants.get('REC')} PHASE={constants.get('PHASE')} "
             f"HOLD={constants.get('HOLD')} BJ={constants['BJ']} warps={constants['num_warps']}")
    try:
        compiled = compile_one(kernel, dtype, constants, arch)
        regs, spilled = registers(compiled.asm["ptx"], arch)
        return (f"ok {label}: {len(compiled.asm['cubin'])} bytes of sm_{arch} code, {regs} registers, "
                f"{spilled} bytes spilled, {time.perf_counter() - t0:.1f} s")
    except Exception as e:  # noqa: BLE001 - every variant's failure is reported
        return f"FAILED {label}: {type(e).__name__}: {str(e)[-2000:]}"


def main(argv: list) -> int:
    from concurrent.futures import ProcessPoolExecutor

    arch = int(argv[0]) if argv else 90
    jobs = [(i, arch) for i in range(len(list(variants())))]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:  # (each compile is single-threaded)
        lines = list(pool.map(_one, jobs))
    print("\n".join(lines))
    return 1 if any(not line.startswith("ok ") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
