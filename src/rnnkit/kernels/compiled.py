"""The compiled bodies (rnnkit.kernels.build), loaded: built once per cell, dtype and machine, kept
on disk as object files, loaded with llvmlite alone (no numba in the process that runs them).

A call that needs a body nobody built yet builds it first (one line on stderr: ~5-20 s, once): a
built-in cell in a process of its own (``python -m rnnkit.kernels.build``), so that numba never
loads into the caller; a cell defined in this process (rnnkit.kernels.cells.register), here. ``make
install`` builds every built-in one ahead (``build --all``).

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
    """The environment of a build process: this package importable, whatever the caller's path."""
    env = dict(os.environ)
    top = pathlib.Path(__file__).resolve().parents[2]  # (the directory holding the package)
    env["PYTHONPATH"] = os.pathsep.join([str(top)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _build(cell, dtype: str, where: str) -> None:
    name = "product" if cell is None else cell.name
    print(f"rnnkit: compiling the fused engine's {name} loops for {dtype} on this machine, once "
          f"(kept in {os.path.dirname(where)})", file=sys.stderr, flush=True)
    if cell is None or (cells.REGISTRY.get(cell.name) is cell and cell.name in cells.BUILTIN):
        package = __package__  # (rnnkit.kernels, or a copy of it under another name)
        job = f"{'products' if cell is None else cell.name}:{dtype}"
        done = subprocess.run([sys.executable, "-m", f"{package}.build", job, "--out", where],
                              env=build_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the fused engine's {name} loops failed:\n{done.stderr[-3000:]}")
    else:
        from . import build

        build.build(cell, dtype, where)


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
    loaded once (keyed on its file, whose name says what it was compiled from and for)."""
    where = path(cell, dtype)
    found = _loaded.get(where)
    if found is None:
        with _lock:
            found = _loaded.get(where)
            if found is None:
                if not os.path.exists(where):
                    _build(cell, dtype, where)
                found = _loaded[where] = _load(where, names)
    return found[0]


def bodies(cell, dtype: str) -> tuple[int, int]:
    """The addresses of ``cell``'s compiled bodies for ``dtype`` (a numpy dtype name), forward and
    backward, built first if nobody has built them (see the module docstring)."""
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
