"""The compiled bodies (rnnkit.kernels.build), loaded: built once per cell, dtype and machine, kept
on disk as object files, loaded with llvmlite alone (no numba in the process that runs them).

What a call needs is built when it first needs it, and only that: a cell's bodies for the call's
dtype and the product entry points for that dtype (which the bodies call), whichever of them is
missing, together: one line on stderr naming them (~10-25 s, once per machine), and one build
process (``python -m rnnkit.kernels.build``, so that numba never loads into the caller) for the
products and the built-in cells; a cell defined in this process (rnnkit.kernels.cells.register) is
then built here. Thread-safe (one lock): a thread that needs an object being built waits for it.
``make install`` builds the CLI's cells (gru, lstm, rnn_tanh) for float32 ahead
(rnnkit.kernels.precompile); with the objects on disk, a fresh process's first fused call costs only
loading them (~0.1 s).

Where: RNNKIT_CACHE_DIR, else ``__pycache__/rnnkit-kernels`` beside this file if it can be written,
else ``~/.cache/rnnkit/kernels``. Each file's name holds a hash of what it was compiled from and for:
the kernels' source and the cell's, numba's and llvmlite's versions, the machine (build.target) and
bounds checking; a change to any of them builds anew.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
import sys
import threading
from importlib import metadata

from . import cells

_KERNEL_SOURCES = ("build.py", "expmath.py", "layout.py", "loops.py", "ops.py", "products.py", "sync.py")
_lock = threading.Lock()
_loaded: dict = {}  # object file -> ({entry: address}, the engine that holds its code)


@functools.cache
def cache_dir() -> pathlib.Path:
    """Where the objects are kept (see the module docstring)."""
    chosen = os.environ.get("RNNKIT_CACHE_DIR")
    candidates = [pathlib.Path(chosen)] if chosen else [
        pathlib.Path(__file__).parent / "__pycache__" / "rnnkit-kernels",
        pathlib.Path.home() / ".cache" / "rnnkit" / "kernels"]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".probe{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return d
        except OSError:
            continue
    raise RuntimeError(f"no writable directory for rnnkit's compiled loops (tried {', '.join(map(str, candidates))}; "
                       f"set RNNKIT_CACHE_DIR)")


def _machine() -> tuple:
    from .build import boundscheck, target

    return (*target(), boundscheck())


@functools.cache
def _kernels_hash(machine: tuple) -> str:
    digest = hashlib.sha256(repr(machine).encode())
    here = pathlib.Path(__file__).parent
    for name in _KERNEL_SOURCES:
        digest.update((here / name).read_bytes())
    for package in ("numba", "llvmlite"):
        digest.update(metadata.version(package).encode())
    return digest.hexdigest()


def path(cell, dtype: str) -> str:
    """The object file of ``cell``'s body (None: the product entry points) for ``dtype`` on this
    machine, built or not."""
    name, source = ("products", "") if cell is None else (cell.name, cell.source_hash)
    digest = hashlib.sha256((_kernels_hash(_machine()) + source + dtype).encode()).hexdigest()[:20]
    return str(cache_dir() / f"{name}-{dtype}-{digest}.o")


def build_env() -> dict:
    """The environment of a build process: this package importable, whatever the caller's path, and
    the cache this process reads (RNNKIT_CACHE_DIR), so that what it builds lands where it is looked
    for."""
    env = dict(os.environ)
    top = pathlib.Path(__file__).resolve().parents[2]  # (the directory holding the package)
    env["PYTHONPATH"] = os.pathsep.join([str(top)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["RNNKIT_CACHE_DIR"] = str(cache_dir())
    return env


def _builtin(cell) -> bool:
    """Whether a build process finds the same cell under its name (a built-in one, not replaced)."""
    return cells.REGISTRY.get(cell.name) is cell and cell.name in cells.BUILTIN


def _build(needed: list, dtype: str) -> None:
    """Build whichever of ``needed`` (cells; None: the product entry points) has no object for
    ``dtype`` yet: one line on stderr naming them all, the product entry points and built-in cells
    in one build process (numba never loads here), then a cell defined in this process, here."""
    missing = [cell for cell in needed if not os.path.exists(path(cell, dtype))]
    if not missing:
        return
    names = ["product" if cell is None else cell.name for cell in missing]
    named = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    print(f"rnnkit: compiling the fused engine's {named} loops for {dtype} on this machine, once "
          f"(kept in {cache_dir()})", file=sys.stderr, flush=True)
    apart = [cell for cell in missing if cell is None or _builtin(cell)]
    if apart:
        package = __package__  # (rnnkit.kernels, or a copy of it under another name)
        jobs = [f"{'products' if cell is None else cell.name}:{dtype}" for cell in apart]
        done = subprocess.run([sys.executable, "-m", f"{package}.build", "-j", "1", *jobs],
                              env=build_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the fused engine's {named} loops failed:\n{done.stderr[-3000:]}")
        lost = [where for where in (path(cell, dtype) for cell in apart) if not os.path.exists(where)]
        if lost:  # (it computed other names: another package, machine or source than this process's)
            raise RuntimeError(f"compiling the fused engine's {named} loops wrote no {', '.join(lost)}:\n"
                               f"{done.stderr[-3000:]}")
    for cell in missing:
        if cell is not None and not _builtin(cell):
            from . import build

            build.build(cell, dtype, path(cell, dtype))


@functools.cache
def _llvm():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm


def _load(where: str, names: tuple) -> tuple:
    """({name: address}, the engine holding the code) from an object file."""
    llvm = _llvm()
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
    engine.add_object_file(where)
    engine.finalize_object()
    addresses = {name: engine.get_function_address(name) for name in names}
    missing = [n for n, a in addresses.items() if not a]
    if missing:
        raise RuntimeError(f"{where} holds no {', '.join(missing)}")
    return addresses, engine


def _entries(cell, dtype: str, names: tuple) -> dict:
    """{name: address} of the entry points in ``cell``'s object for ``dtype`` (None: the products'),
    loaded once (keyed on its file, whose name says what it was compiled from and for). A cell's
    object is built with the products' if either is missing (their loops call the products)."""
    where = path(cell, dtype)
    found = _loaded.get(where)
    if found is None:
        with _lock:
            found = _loaded.get(where)
            if found is None:
                if not os.path.exists(where):
                    _build([None] if cell is None else [None, cell], dtype)
                found = _loaded[where] = _load(where, names)
    return found[0]


def bodies(cell, dtype: str) -> tuple[int, int]:
    """The addresses of ``cell``'s compiled bodies for ``dtype`` (a numpy dtype name), forward and
    backward, built first if nobody has built them, together with the product entry points for
    ``dtype`` if those are missing too (see the module docstring): ask for these before
    :func:`products`, so that a first call builds both at once."""
    from .build import BACKWARD, FORWARD

    found = _entries(cell, dtype, (FORWARD, BACKWARD))
    return found[FORWARD], found[BACKWARD]


def products(dtype: str) -> dict:
    """The addresses of the product entry points for ``dtype`` (rnnkit.kernels.products.ENTRIES):
    name -> address."""
    names = ("mm", "packed_mm", "pack_rows", "pack_columns", "weights_product")
    found = _entries(None, dtype, tuple(f"rnnkit_{n}" for n in names))
    return {n: found[f"rnnkit_{n}"] for n in names}


_CALL = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.lru_cache(maxsize=None)
def caller(address: int):
    """The body at ``address`` as a Python callable of a block's address (it releases the GIL)."""
    return _CALL(address)
