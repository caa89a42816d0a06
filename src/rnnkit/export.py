"""Export a module that holds rnnkit layers to ONNX, with a dynamic batch and sequence length.

:func:`to_onnx` runs torch's exporter (``torch.onnx.export(dynamo=True)``, which captures the module
with torch.export) with every rnnkit layer-direction as the operator ``rnnkit::fused_layer``
(:mod:`rnnkit.kernels.op`) and translates that operator into ONNX's own ``RNN``, ``GRU`` or ``LSTM``
(:func:`onnx_layer`), so any ONNX runtime serves the recurrence as one operator, for any batch and
length. Everything else in the module goes through torch's own translations.

The layers' engines do not matter here: the exported graph is the same for each. GRU with
``reset_after=False`` is ONNX's GRU with ``linear_before_reset=0``; CustomRNN's Elman cell is ONNX's
RNN. LSTM with ``proj_size`` has no ONNX operator (nor a fused one): it exports as torch's op,
and with a fixed length.

Needs ``onnx`` and ``onnxscript`` (the ``dev`` extra), and ``onnxruntime`` to check the result.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import tempfile
import warnings

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .kernels import op as rnnkit_op

# torch's gate blocks in ONNX's order: LSTM i, f, g, o -> i, o, f, c; GRU r, z, n -> z, r, h.
_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}


def to_onnx(module: nn.Module, path, input_size: int, *, batch_first: bool = True,
            dtype: torch.dtype = torch.float32, check: bool = True, opset_version: int = 18,
            min_length: int = 1) -> pathlib.Path:
    """Write ``module`` to ``path`` as an ONNX model whose input is a sequence batch of any size.

    module: an nn.Module on the CPU holding rnnkit layers (and anything torch.onnx exports), called
    as ``module(x)`` with one tensor x of shape (batch, length, input_size) — (length, batch,
    input_size) with ``batch_first=False`` — of ``dtype``. Its outputs (a tensor, or a tuple or
    list of tensors, nested as the module returns them) become the model's outputs in order.
    The ONNX model's input is named ``x``, with the batch and length dimensions named ``batch``
    and ``length`` (at least ``min_length``: a module that reads a fixed number of its last steps,
    ``x[:, -k:]``, needs ``min_length >= k``); its outputs ``y`` (one output) or ``y0``, ``y1``, ... .
    It is exported in eval mode (dropout off); the module's own mode is restored.
    check: run the model with onnxruntime, where it is installed, at two batch sizes and lengths
    (from ``min_length``) other than the traced one, and raise an RnnkitError unless it agrees with
    the module (atol and rtol 1e-4 in float32).
    Returns the path written. Raises ConfigError for an argument it cannot export, or when
    torch's exporter fails (with its reason).
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"to_onnx exports an nn.Module, got {type(module).__name__}")
    for name, value in (("input_size", input_size), ("min_length", min_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if any(p.device.type != "cpu" for p in module.parameters()):
        raise ConfigError("to_onnx exports a module on the CPU (call module.cpu() first)")
    from .layers import LSTM

    if any(isinstance(m, LSTM) and m.proj_size for m in module.modules()):
        raise ConfigError("ONNX's LSTM has no projection: a module with LSTM(proj_size > 0) does not export")
    path = pathlib.Path(path)
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it; say so here rather than deep inside
    except ImportError as e:
        raise ConfigError("ONNX export needs the onnx and onnxscript packages "
                          "(pip install -c constraints.txt -e '.[dev]')") from e
    example = _example(input_size, batch_first, dtype, batch=3, length=min_length + 6)
    batch_dim, length_dim = (0, 1) if batch_first else (1, 0)
    dynamic = ({batch_dim: torch.export.Dim("batch", min=1), length_dim: torch.export.Dim("length", min=min_length)},)
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            n_outputs = len(_flatten(module(example)))
        with _translated(), warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")  # the exporter's progress and deprecation notes
            program = torch.onnx.export(
                module, (example,), dynamo=True, input_names=["x"], dynamic_shapes=dynamic,
                output_names=["y"] if n_outputs == 1 else [f"y{k}" for k in range(n_outputs)],
                opset_version=opset_version, verbose=False,
                custom_translation_table={torch.ops.rnnkit.fused_layer.default: onnx_layer})
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".onnx", delete=False) as tmp:
            pass
        try:
            program.save(tmp.name)
            if check:
                verify(module, tmp.name, input_size, batch_first=batch_first, dtype=dtype,
                       sizes=((1, min_length), (5, min_length + 11)))
            pathlib.Path(tmp.name).replace(path)  # whole or not at all
        finally:
            pathlib.Path(tmp.name).unlink(missing_ok=True)
    except torch.onnx.errors.OnnxExporterError as e:  # (the exporter's own: its first cause says why)
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        reason = re.sub(r"\x1b\[[0-9;]*m", "", (str(cause).strip().splitlines() or [""])[0])
        raise ConfigError(f"torch.onnx.export could not export this module: {type(cause).__name__}: "
                          f"{reason}") from e
    finally:
        module.train(training)
    return path


def verify(module: nn.Module, path, input_size: int, *, batch_first: bool = True,
           dtype: torch.dtype = torch.float32, sizes=((1, 1), (5, 12)), tol: float = 1e-4) -> bool:
    """Run the ONNX model at ``path`` with onnxruntime on random inputs of each (batch, length) in
    ``sizes`` and compare every output with ``module``'s (in eval mode, under no_grad). Returns False
    where onnxruntime is not installed; raises ConfigError on a difference over ``tol`` (absolute and
    relative)."""
    try:
        import onnxruntime
    except ImportError:
        return False
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    inputs = [_example(input_size, batch_first, dtype, batch, length, gen) for batch, length in sizes]
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            wants = [[t.numpy() for t in _flatten(module(x))] for x in inputs]
    finally:
        module.train(training)
    for (batch, length), x, want in zip(sizes, inputs, wants):
        got = session.run(None, {"x": x.numpy()})
        if len(got) != len(want):
            raise ConfigError(f"the ONNX model at {path} gives {len(got)} outputs, the module {len(want)}")
        for k, (g, w) in enumerate(zip(got, want)):
            if g.shape != w.shape or not torch.allclose(torch.from_numpy(g), torch.from_numpy(w), atol=tol, rtol=tol):
                diff = float(abs(g - w).max()) if g.shape == w.shape else f"shape {g.shape} against {w.shape}"
                raise ConfigError(f"the ONNX model at {path} differs from the module at batch {batch}, "
                                  f"length {length}, output {k}: {diff}")
    return True


def _example(input_size: int, batch_first: bool, dtype: torch.dtype, batch: int, length: int,
             gen: torch.Generator | None = None) -> Tensor:
    shape = (batch, length, input_size) if batch_first else (length, batch, input_size)
    return torch.randn(shape, generator=gen).to(dtype)


def _flatten(out) -> list[Tensor]:
    """A module's outputs in the order the exporter lists them (nested tuples and lists flattened)."""
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in _flatten(o)]


@contextlib.contextmanager
def _translated():
    """Within: every rnnkit layer-direction that the fused engine runs traces as rnnkit::fused_layer,
    whose translation :func:`onnx_layer` is (rnnkit.layers.choose_engine)."""
    before = rnnkit_op.TRANSLATED
    rnnkit_op.TRANSLATED = True
    try:
        yield
    finally:
        rnnkit_op.TRANSLATED = before


def onnx_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, code: int, reverse: bool):
    """``rnnkit::fused_layer`` as ONNX (an onnxscript translation for torch.onnx.export's
    custom_translation_table): one ONNX RNN/GRU/LSTM node of one direction, its weights taken apart
    into ONNX's gate order, x (B, T, I) and the output (B, T, H) transposed around ONNX's (T, B, ·)
    layout. Only the first three outputs are the layer's; the other four (the activations a backward
    would read) are placeholders that nothing in an inference graph reads."""
    from onnxscript import opset18 as op

    from . import kernels

    onnx_cells = {kernels.LSTM: "LSTM", kernels.GRU: "GRU", kernels.GRU_RESET_BEFORE: "GRU", kernels.RNN_TANH: "RNN",
                  kernels.RNN_RELU: "RNN"}
    if code not in onnx_cells:
        raise ConfigError(f"ONNX has no operator for the cell {kernels.cell_of(code).name!r} (only Elman RNN, LSTM "
                          f"and GRU export)")
    cell = onnx_cells[code]

    def onnx_weight(W):  # (G*H, ·) in torch's gate order -> (1, G*H, ·) in ONNX's
        order = _GATE_ORDER[cell]
        if len(order) > 1:
            blocks = op.Split(W, axis=0, num_outputs=len(order))
            W = op.Concat(*[blocks[k] for k in order], axis=0)
        return op.Unsqueeze(W, op.Constant(value_ints=[0]))

    W, R = onnx_weight(W_ih), onnx_weight(W_hh)
    if b_ih is None and b_hh is None:
        B = None
    else:
        b_ih = op.Sub(b_hh, b_hh) if b_ih is None else b_ih  # (zeros of the other's size and dtype)
        b_hh = op.Sub(b_ih, b_ih) if b_hh is None else b_hh
        B = op.Concat(onnx_weight(b_ih), onnx_weight(b_hh), axis=1)  # (1, 2*G*H)
    X = op.Transpose(x, perm=[1, 0, 2])  # (T, B, I)
    first = op.Constant(value_ints=[0])
    inputs = {"B": B, "sequence_lens": None if lengths is None else op.Cast(lengths, to=6),  # int32
              "initial_h": op.Unsqueeze(h0, first)}  # (1, B, H)
    attrs = {"direction": "reverse" if reverse else "forward", "hidden_size": int(W_hh.shape[1])}
    empty = op.Constant(value_ints=[0])  # (placeholder)
    if cell == "LSTM":
        Y, Y_h, Y_c = op.LSTM(X, W, R, initial_c=op.Unsqueeze(c0, first), **inputs, **attrs)
        c_n = op.Squeeze(Y_c, first)
    elif cell == "GRU":
        Y, Y_h = op.GRU(X, W, R, **inputs, linear_before_reset=int(code == kernels.GRU), **attrs)
        c_n = empty
    else:
        activation = "Relu" if code == kernels.RNN_RELU else "Tanh"
        Y, Y_h = op.RNN(X, W, R, **inputs, activations=[activation], **attrs)
        c_n = empty
    out = op.Transpose(op.Squeeze(Y, op.Constant(value_ints=[1])), perm=[1, 0, 2])  # (B, T, H)
    h_n = op.Squeeze(Y_h, first)
    return out, h_n, c_n, empty, empty, empty, empty
