"""Compiling the fused engine: one body per cell and dtype, as machine code in an object file.

A cell's bodies are the C functions ``void rnnkit_forward(int64 *block)`` and ``rnnkit_backward``:
:func:`rnnkit.kernels.loops.shard_runner`'s loops, which take the block's shards one after another
(whichever threads run them share the shards out, a team of any size). They cannot raise (numba
would print an exception as unraisable and return): an exception in a shard is written to the
block's status and the call is aborted (rnnkit.kernels.sync), and the caller raises. The product
entry points (rnnkit.kernels.products) are compiled once per dtype, apart, and called through their
addresses in the block.

numba compiles it (with the cell's functions in it) and llvmlite emits its final module as an
object for the chosen machine (:func:`target`). The module is checked to call nothing outside it
(but LLVM's intrinsics: its other callees are reached through addresses in the block) and to hold
no address of this process, so that the object loads into any process with llvmlite alone
(rnnkit.kernels.compiled), without numba.

    python -m rnnkit.kernels.build --all -j 2      # every built-in cell, both dtypes (~100 s on 2 cores)
    python -m rnnkit.kernels.build products:float32 lstm:float32 -j 1

Each job (CELL:DTYPE, ``products`` for the product entry points) is written to its place in the cache
(rnnkit.kernels.compiled.path, RNNKIT_CACHE_DIR as the caller passes it), skipped if it is there
already; ``-j`` shares the jobs out to that many processes. A first call that finds objects missing
runs this with all of them and ``-j 1`` (one process); ``make install`` with the products and the
CLI's cells for float32 (rnnkit.kernels.precompile), leaving the rest to first use.

The machine: the host, or RNNKIT_CPU (an LLVM CPU name, e.g. ``x86-64`` for a generic x86-64 without
AVX, FMA or AVX-512) with RNNKIT_CPU_FEATURES (default: the CPU's own). RNNKIT_BOUNDSCHECK=1
compiles every array access checked (an IndexError in a shard then raises in the caller).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import types as pytypes


def target() -> tuple[str, str]:
    """(LLVM CPU name, features) the loops are compiled for (see the module docstring)."""
    cpu = os.environ.get("RNNKIT_CPU", "").strip()
    if cpu and cpu != "host":
        return cpu, os.environ.get("RNNKIT_CPU_FEATURES", "")
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def vector_bytes() -> int:
    """The width of the vectors the products use on the target: 64 bytes where it has AVX-512 (32
    registers), else 32 (a CPU named without features counts as without)."""
    return 64 if "+avx512f" in target()[1].split(",") else 32


def boundscheck() -> bool:
    """Whether this build is a checked one: RNNKIT_BOUNDSCHECK=1 (every array access checked, an
    exception in a body caught and raised in the caller, the tests' failure injection)."""
    return os.environ.get("RNNKIT_BOUNDSCHECK", "") == "1"


def _configure_numba() -> None:
    """numba reads its target and bounds checking from the environment when it is first imported."""
    if "numba" in sys.modules:
        return
    cpu, features = target()
    os.environ["NUMBA_CPU_NAME"] = cpu
    os.environ["NUMBA_CPU_FEATURES"] = features
    if boundscheck():
        os.environ["NUMBA_BOUNDSCHECK"] = "1"


_jitable: set = set()


def _compile_helpers(fn) -> None:
    """Make the plain Python functions that ``fn`` calls compilable where it is compiled (a cell's
    helpers in its file, a pointwise cell's scalar functions), and theirs in turn: each as a function
    of its own (numba's overload of the function object), which LLVM inlines where it is small.
    (numba's own inlining of them mixed up variables of the same name in caller and callee.)"""
    from numba.extending import overload

    from . import expmath, ops

    seen = {id(getattr(ops, n)) for n in ops.__all__}
    stack = [fn]
    while stack:
        f = stack.pop()
        for name in f.__code__.co_names:
            g = f.__globals__.get(name)
            if not isinstance(g, pytypes.FunctionType) or id(g) in seen or g.__module__ == "typing":
                continue
            seen.add(id(g))
            if id(g) not in _jitable:
                _jitable.add(id(g))
                overload(g, jit_options=expmath.JIT, strict=False)(lambda *args, _g=g: _g)
            stack.append(g)
        for const in f.__code__.co_consts:  # (closures' own code)
            if isinstance(const, pytypes.CodeType):
                stack.append(pytypes.FunctionType(const, f.__globals__))


def bodies(cell, dtype: str) -> dict:
    """The compiled bodies (numba cfuncs) of ``cell`` for ``dtype`` ("float32" or "float64"): entry
    name (FORWARD, BACKWARD) -> cfunc."""
    _configure_numba()
    from numba import cfunc, types

    from . import loops
    from .expmath import JIT

    for fn in (cell.forward, cell.backward, *(cell.second or ())):
        _compile_helpers(fn)
    options = {k: v for k, v in JIT.items() if k != "nogil"}
    checked = boundscheck()
    bodies_ = loops.shard_runner(cell, dtype, checked)
    if not checked:  # (nothing in them raises)
        return {name: cfunc(types.void(types.voidptr), **options)(fn) for name, fn in zip((FORWARD, BACKWARD), bodies_)}
    from numba import njit

    from .sync import block, failed

    def catching(body):
        inner = njit(**JIT)(body)

        def entry(data):
            try:
                inner(data)
            except Exception:
                failed(block(data))

        return cfunc(types.void(types.voidptr), **options)(entry)

    return {name: catching(fn) for name, fn in zip((FORWARD, BACKWARD), bodies_)}


FORWARD, BACKWARD = "rnnkit_forward", "rnnkit_backward"
_INTRINSIC = re.compile(r"llvm\.")
# What numba's cfunc wrapper calls when its function returns an exception, to print it as unraisable
# (Python's C API, numba's helpers and its runtime's): never, here (a body catches every exception;
# the product entries raise none), so these are defined in the object as traps rather than left for
# the loader to find.
_ERROR_PATH = re.compile(r"(_?Py|numba_|NRT_)\w+$")


def _trap_error_path(text: str) -> str:
    """The module's text with numba's error-path externals (_ERROR_PATH) defined as traps."""
    def define(match):
        name = match.group(2)
        if not _ERROR_PATH.match(name):
            return match.group(0)
        return f"define {match.group(1)} @{name}({match.group(3)}) {{\n  call void @llvm.trap()\n  unreachable\n}}"

    text = re.sub(r"^declare (?:\w+ )*?([\w*]+) @\"?([\w.]+)\"?\(([^)]*)\)[^\n]*$", define, text, flags=re.MULTILINE)
    if "declare void @llvm.trap()" not in text:
        text += "\ndeclare void @llvm.trap()\n"
    return text


def object_code(functions: dict) -> bytes:
    """Compiled cfuncs (entry name -> cfunc) as one object for :func:`target`: each one's module
    linked into one, its entry renamed, every other function internal (and those unused removed),
    checked as the module docstring says."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = None
    for name, compiled in functions.items():
        part = llvm.parse_assembly(_trap_error_path(compiled.inspect_llvm()))
        part.get_function(compiled.native_name).name = name
        for fn in part.functions:  # (a copy of a helper in each part: one is kept)
            if not fn.is_declaration and fn.name not in functions:
                fn.linkage = "linkonce_odr"
        if module is None:
            module = part
        else:
            module.link_in(part)
    for fn in module.functions:
        if not fn.is_declaration and fn.name not in functions:
            fn.linkage = "internal"
    for gv in module.global_variables:
        if not gv.is_declaration:
            gv.linkage = "internal"
    cpu, features = target()
    machine = llvm.Target.from_triple(module.triple).create_target_machine(
        cpu=cpu, features=features, opt=3, reloc="pic", codemodel="default")
    passes = llvm.create_new_module_pass_manager()
    passes.add_global_dead_code_eliminate_pass()
    passes.add_strip_dead_prototype_pass()
    passes.run(module, llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options()))
    outside = sorted(fn.name for fn in module.functions if fn.is_declaration and not _INTRINSIC.match(fn.name))
    if outside:
        raise RuntimeError(f"the compiled loops call functions outside them: {', '.join(outside)}")
    if re.search(r"inttoptr \(i64 [1-9]\d{5,}", str(module)):
        raise RuntimeError("the compiled loops hold an address of the process that compiled them")
    return machine.emit_object(module)


def products(dtype: str) -> dict:
    """The product entry points for ``dtype`` compiled (rnnkit.kernels.products): name -> cfunc."""
    _configure_numba()
    import inspect

    import numpy as np
    from numba import cfunc, types

    from . import products as mod
    from .expmath import JIT

    options = {k: v for k, v in JIT.items() if k != "nogil"}
    found = mod.entries(np.dtype(dtype).type(0.0))
    return {f"rnnkit_{name}": cfunc(types.void(*[types.int64] * len(inspect.signature(fn).parameters)), **options)(fn)
            for name, fn in found.items()}


def build(cell, dtype: str, path: str) -> None:
    """Compile ``cell`` for ``dtype`` (None: the product entry points) and write its object to
    ``path`` (atomically)."""
    data = object_code(products(dtype) if cell is None else bodies(cell, dtype))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _worker(jobs: list) -> None:
    from . import compiled

    for name, dtype in jobs:
        cell = _cell(name)
        build(cell, dtype, compiled.path(cell, dtype))


def _cell(name: str):
    """A job's cell: a registered one, or None for "products" (the product entry points)."""
    from . import cells

    return None if name == "products" else cells.get(name)


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="*", help="CELL:DTYPE pairs, e.g. lstm:float32 (a registered cell)")
    parser.add_argument("--all", action="store_true", help="every built-in cell in both dtypes")
    parser.add_argument("-j", "--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", help="with one job: the object's path (default: the cache)")
    args = parser.parse_args(argv)
    _configure_numba()
    from . import cells, compiled

    jobs = [tuple(j.split(":")) for j in args.jobs]
    if args.all:
        jobs += [(name, dtype) for name in ("products", *cells.BUILTIN) for dtype in ("float32", "float64")]
    if args.out:
        (name, dtype), = jobs
        build(_cell(name), dtype, args.out)
        return
    jobs = [(n, d) for n, d in jobs if not os.path.exists(compiled.path(_cell(n), d))]
    if len(jobs) <= 1 or args.processes <= 1:
        _worker(jobs)
        return
    import subprocess

    shares = [jobs[k::args.processes] for k in range(min(args.processes, len(jobs)))]
    procs = [subprocess.Popen([sys.executable, "-m", f"{__package__}.build", *[f"{n}:{d}" for n, d in share]],
                              env=compiled.build_env()) for share in shares]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"compiling the fused engine's loops failed (exit codes {codes})")


if __name__ == "__main__":
    main()
