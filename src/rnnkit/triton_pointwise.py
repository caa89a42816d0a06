"""``engine="triton"`` for a cell made by :func:`rnnkit.kernels.cells.pointwise` (the peephole LSTM,
IndRNN, and the cells users define): its per-unit ``forward`` and ``backward``, written in Python
for the fused engine, become Triton functions, and a time loop is written around them for that cell.

The time loop is the persistent one of rnnkit.triton_kernels (one program a tile of batch rows over
every unit; any hidden size); its text is made here per cell (the gate blocks, states, saved values
and unit parameters spelt out) and kept as a module in the compiled loops' cache directory, where
Triton reads its source.

The cell's functions are translated, not trusted to be Triton already:

* ``type(x)(1.0)`` (a constant in the data's dtype, for numba) becomes ``1.0`` (Triton's constants
  take the dtype of the tensor they meet);
* ``a if cond else b`` becomes ``tl.where(cond, a, b)`` (per unit, as the fused engine reads it;
  Triton would branch on the whole tile);
* ``sigmoid``, ``tanh`` and ``relu`` of rnnkit.kernels.ops become Triton functions; a number the
  functions read from their module is inlined.

Anything else a function reads from outside itself (another function, an array) cannot be
translated: :func:`translation_error` says what, and the engine does not serve the cell.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import importlib.util
import inspect
import re
import sys
import textwrap

from .kernels import ops

_OPS = {id(ops.sigmoid): "_sigmoid", id(ops.tanh): "_tanh", id(ops.relu): "_relu"}
_MODULE_HEAD = '''"""rnnkit's Triton time loop for the cell {name!r} (made by rnnkit.triton_pointwise)."""
import triton
import triton.language as tl

from rnnkit.triton_kernels import _product, _relu, _rows, _sigmoid, _tanh, _tile


@triton.jit
def _as_tile(value, like):
    """value (a tile, or a constant) as a tile of like's shape and dtype"""
    return value + tl.zeros_like(like)

'''


class _Untranslatable(Exception):
    pass


class _ToTriton(ast.NodeTransformer):
    """The rewrites of the module docstring, on one function's tree."""

    def __init__(self, fn, definition: ast.FunctionDef):
        self.fn = fn
        self.globals = fn.__globals__
        self.locals = {a.arg for a in ast.walk(definition.args) if isinstance(a, ast.arg)}  # its arguments
        self.assigned: set = set()  # its variables, as the rewrite comes to them

    def visit_Call(self, node):
        self.generic_visit(node)
        inner = node.func
        if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "type"
                and len(node.args) == 1 and not node.keywords):
            return node.args[0]  # type(x)(c) -> c
        return node

    def visit_IfExp(self, node):
        self.generic_visit(node)
        where = ast.Attribute(value=ast.Name(id="tl", ctx=ast.Load()), attr="where", ctx=ast.Load())
        return ast.Call(func=where, args=[node.test, node.body, node.orelse], keywords=[])

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id not in self.locals | self.assigned:
            value = getattr(self.globals.get(node.value.id), node.attr, None)
            if id(value) in _OPS:  # ops.tanh
                return ast.copy_location(ast.Name(id=_OPS[id(value)], ctx=ast.Load()), node)
        return self.generic_visit(node)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Store):
            self.assigned.add(node.id)
            return node
        if node.id in self.locals or node.id in self.assigned or node.id == "type":
            return node
        value = self.globals.get(node.id, getattr(builtins, node.id, None))
        if id(value) in _OPS:
            return ast.copy_location(ast.Name(id=_OPS[id(value)], ctx=ast.Load()), node)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return ast.copy_location(ast.Constant(value=value), node)
        raise _Untranslatable(f"{self.fn.__name__} reads {node.id!r}, which is not one of rnnkit.kernels.ops' "
                              f"sigmoid, tanh, relu nor a number")


def _translate(fn, name: str) -> str:
    """``fn``'s source as the Triton function ``name`` (see the module docstring)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    definition = tree.body[0]
    if not isinstance(definition, ast.FunctionDef):
        raise _Untranslatable(f"{fn!r} is not a plain function")
    # the function's own statements (a docstring dropped), assignments first seen as they come
    body = definition.body[1:] if (definition.body and isinstance(definition.body[0], ast.Expr) and
                                   isinstance(definition.body[0].value, ast.Constant)) else definition.body
    definition.body = body or [ast.Pass()]
    definition.decorator_list = []
    definition.name = name
    definition = ast.fix_missing_locations(_ToTriton(fn, definition).visit(definition))
    return "@triton.jit\n" + ast.unparse(definition) + "\n"


@functools.cache
def _functions(cell) -> tuple[str, str]:
    forward, backward = cell.pointwise
    return _translate(forward, "cell_forward"), _translate(backward, "cell_backward")


def translation_error(cell) -> str | None:
    """Why ``cell``'s functions cannot become Triton functions, or None where they can (or it is not
    a pointwise cell: then 'not made by pointwise')."""
    if not getattr(cell, "pointwise", ()):
        return "not made by rnnkit.kernels.cells.pointwise"
    try:
        _functions(cell)
    except (_Untranslatable, OSError, TypeError, SyntaxError) as e:
        return str(e)
    return None


def _tuple(items: list) -> str:
    return "(" + "".join(f"{i}, " for i in items) + ")"


def _loops(cell) -> str:
    """The forward and backward kernels' text for ``cell`` (G gate blocks, S states, A saved values,
    P unit parameters; the layouts of rnnkit.triton_kernels, ``keep`` (B, T, G+A, H) holding what the
    backward reads, ``dprm`` (B, T, P, H) the unit parameters' gradients of each row and step)."""
    G, S, A, P = cell.gates, cell.states, cell.saved, len(cell.params)
    K = G + A
    head = '''    rows, rmask, length = _rows(lengths, B, BB, HAS_LENGTHS)
    xrow, srow, krow, hrow = T * {G} * H, (T + 1) * H, T * {K} * H, T * H
'''.format(G=G, K=K)
    tile = '''            j = j0 + tl.arange(0, BJ)
            jmask = j < H
            m2 = rmask[:, None] & jmask[None, :]
'''
    load = "tl.load(_tile({}, {}, rows, j), mask=m2, other=0.0)"
    product = " + _product(hs + t * H, srow, w + {k} * H * H, 1, H, rows, rmask, j, jmask, H, BB, BJ, BK, PREC)"
    states = [("hs", "h"), ("cs", "c")][:S]
    prm = [f"tl.load(prm + {i} * H + j, mask=jmask, other=0.0)[None, :]" for i in range(P)]
    fwd = [
        "@triton.jit",
        "def forward_kernel(xg, w, prm, hs, cs, keep, lengths, B, T, H, HAS_LENGTHS: tl.constexpr,",
        "                   BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):",
        head.rstrip("\n"),
        "    for t in range(T):",
        "        if HAS_LENGTHS:",
        "            alive = (t < length)[:, None]",
        "        for j0 in range(0, H, BJ):",
        tile.rstrip("\n"),
        "            pre = " + _tuple([load.format(f"xg + t * {G} * H + {k} * H", "xrow")
                                     + (product.format(k=k) if cell.recurrent else "") for k in range(G)]),
        "            prev = " + _tuple([load.format(f"{a} + t * H", "srow") for a, _ in states]),
        "            new, kept = cell_forward(pre, prev, " + _tuple(prm) + ")",
    ]
    for i, (a, _) in enumerate(states):
        fwd += [f"            value = _as_tile(new[{i}], prev[0])",
                "            if HAS_LENGTHS:",
                f"                value = tl.where(alive, value, prev[{i}])",
                f"            tl.store(_tile({a} + (t + 1) * H, srow, rows, j), value, mask=m2)"]
    fwd += [f"            tl.store(_tile(keep + t * {K} * H + {q} * H, krow, rows, j), _as_tile(kept[{q}], prev[0]), "
            f"mask=m2)" for q in range(K)]
    fwd += ["        tl.debug_barrier()"]
    bwd = [
        "@triton.jit",
        "def backward_kernel(w, prm, hs, cs, keep, dy, dg, dh, dc, dprm, lengths, B, T, H, HAS_LENGTHS: tl.constexpr,",
        "                    BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):",
        head.rstrip("\n"),
        "    for s in range(T):",
        "        t = T - 1 - s",
        "        now, before = dh + (s % 2) * B * H, dh + ((s + 1) % 2) * B * H",
        "        if HAS_LENGTHS:",
        "            alive = (t < length)[:, None]",
        "        for j0 in range(0, H, BJ):",
        tile.rstrip("\n"),
        "            carried = " + load.format("now", "H"),
        "            d = carried + " + load.format("dy + t * H", "hrow"),
        "            if HAS_LENGTHS:",
        "                d = tl.where(alive, d, 0.0)",
    ]
    if S == 2:
        bwd += ["            dc_carried = " + load.format("dc", "H"),
                "            dcv = dc_carried",
                "            if HAS_LENGTHS:",
                "                dcv = tl.where(alive, dc_carried, 0.0)"]
    bwd += [
        "            kept = " + _tuple([load.format(f"keep + t * {K} * H + {q} * H", "krow") for q in range(K)]),
        "            prev = " + _tuple([load.format(f"{a} + t * H", "srow") for a, _ in states]),
        "            new = " + _tuple([load.format(f"{a} + (t + 1) * H", "srow") for a, _ in states]),
        "            d_pre, d_prev, d_prm = cell_backward(kept, prev, new, " + _tuple(prm) + ", "
        + _tuple(["d", "dcv"][:S]) + ")",
    ]
    for k in range(G):
        bwd += [f"            tl.store(_tile(dg + t * {G} * H + {k} * H, xrow, rows, j), _as_tile(d_pre[{k}], d), mask=m2)"]
    bwd += ["            direct = _as_tile(d_prev[0], d)",
            "            if HAS_LENGTHS:",
            "                direct = tl.where(alive, direct, carried)",
            "            tl.store(_tile(before, H, rows, j), direct, mask=m2)"]
    if S == 2:
        bwd += ["            dc_before = _as_tile(d_prev[1], d)",
                "            if HAS_LENGTHS:",
                "                dc_before = tl.where(alive, dc_before, dc_carried)",
                "            tl.store(_tile(dc, H, rows, j), dc_before, mask=m2)"]
    bwd += [f"            tl.store(_tile(dprm + t * {P} * H + {i} * H, T * {P} * H, rows, j), _as_tile(d_prm[{i}], d), "
            f"mask=m2)" for i in range(P)]
    bwd += ["        tl.debug_barrier()"]
    if cell.recurrent:  # h_t's gradient through the products of h_t
        bwd += ["        for j0 in range(0, H, BJ):",
                tile.replace("            ", "            ").rstrip("\n"),
                "            acc = " + load.format("before", "H")]
        bwd += [f"            acc += _product(dg + t * {G} * H + {k} * H, xrow, w + {k} * H * H, H, 1, rows, rmask, j, "
                f"jmask, H, BB, BJ, BK, PREC)" for k in range(G)]
        bwd += ["            tl.store(_tile(before, H, rows, j), acc, mask=m2)",
                "        tl.debug_barrier()"]
    return "\n".join(fwd) + "\n\n\n" + "\n".join(bwd) + "\n"


@functools.cache
def module(cell):
    """The Triton module of ``cell`` (forward_kernel, backward_kernel), written to the cache
    directory once and imported (Triton reads a kernel's source from its file)."""
    from .kernels import compiled

    forward, backward = _functions(cell)
    text = (_MODULE_HEAD.format(name=cell.name) + "\n" + forward + "\n\n" + backward + "\n\n" + _loops(cell))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = compiled.cache_dir() / f"triton_{re.sub(r'[^A-Za-z0-9_]', '_', cell.name)}_{digest}.py"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{id(text)}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    name = f"rnnkit_triton_cell_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded
