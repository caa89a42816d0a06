"""Export: rnnkit.export.to_onnx against PyTorch with onnxruntime at several batch sizes and lengths,
ONNX's own recurrent operators in the graph; torch.export with a dynamic length; jit tracing and the
TorchScript ONNX exporter. (torch.onnx.export's own path, per cell and engine: tests/test_dropin.py.)"""

import warnings

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.errors import ConfigError

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rnnkit.export import to_onnx, verify  # noqa: E402 - after the skips

pytestmark = pytest.mark.usefixtures("single_thread")

I, H = 3, 8
SIZES = ((1, 1), (2, 5), (7, 23))  # (batch, length), none of them the traced (3, 7)


class Head(nn.Module):
    """A recurrent layer read by a linear head at every step, and its final states returned too."""

    def __init__(self, layer: nn.Module, width: int) -> None:
        super().__init__()
        self.rnn, self.head = layer, nn.Linear(width, 2)

    def forward(self, x):
        out, state = self.rnn(x)
        return self.head(out), state


def onnx_ops(path) -> set:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("name, layer, width, operator", [
    ("lstm-2-layers-bidirectional", lambda: rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True), 2 * H, "LSTM"),
    ("gru", lambda: rnnkit.GRU(I, H, batch_first=True), H, "GRU"),
    ("gru-reset-before-reference", lambda: rnnkit.GRU(I, H, batch_first=True, reset_after=False, engine="reference"), H, "GRU"),
    ("rnn-relu-no-bias-torch", lambda: rnnkit.RNN(I, H, nonlinearity="relu", bias=False, batch_first=True, engine="torch"), H, "RNN"),
])
def test_to_onnx_runs_in_onnxruntime_at_any_batch_and_length(tmp_path, name, layer, width, operator):
    torch.manual_seed(0)
    model = Head(layer(), width)
    path = to_onnx(model, tmp_path / "model.onnx", I)  # (checks itself at two sizes)
    assert operator in onnx_ops(path)
    assert verify(model, path, I, sizes=SIZES)
    assert [o.name for o in onnx.load(str(path)).graph.output][:2] == ["y0", "y1"]


def test_to_onnx_of_the_seeds_model_and_sequence_first_input(tmp_path):
    torch.manual_seed(0)
    custom = to_onnx(rnnkit.CustomRNN(I, H, 2), tmp_path / "custom.onnx", I)
    assert "RNN" in onnx_ops(custom)
    layer = rnnkit.LSTM(I, H)  # (length, batch, features)
    seq_first = to_onnx(layer, tmp_path / "seq.onnx", I, batch_first=False)
    assert verify(layer, seq_first, I, batch_first=False, sizes=SIZES)


def test_verify_finds_a_different_model(tmp_path):
    torch.manual_seed(0)
    model = rnnkit.GRU(I, H, batch_first=True)
    path = to_onnx(model, tmp_path / "model.onnx", I)
    with torch.no_grad():
        model.weight_hh_l0.add_(0.1)
    with pytest.raises(ConfigError, match="differs from the module"):
        verify(model, path, I)


def test_to_onnx_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no projection"):
        to_onnx(rnnkit.LSTM(I, H, proj_size=2), tmp_path / "p.onnx", I)
    with pytest.raises(ConfigError, match="input_size"):
        to_onnx(rnnkit.GRU(I, H), tmp_path / "g.onnx", 0)
    with pytest.raises(ConfigError, match="nn.Module"):
        to_onnx(lambda x: x, tmp_path / "f.onnx", I)
    class DataDependent(nn.Module):  # a branch on a value: no graph holds it
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ConfigError, match="torch.onnx.export could not export this module: .+"):
        to_onnx(DataDependent(), tmp_path / "d.onnx", I)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_torch_export_captures_one_operator_a_layer_with_dynamic_batch_and_length(cell):
    torch.manual_seed(0)
    ours = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}[cell](I, H, num_layers=2, batch_first=True)
    ref = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](I, H, num_layers=2, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("length")},)
    program = torch.export.export(ours, (torch.randn(3, 7, I),), dynamic_shapes=dims)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("rnnkit.fused_layer.default") == 2
    for batch, length in SIZES:
        x = torch.randn(batch, length, I)
        got, want = program.module()(x), ref(x)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def test_jit_trace_and_the_torchscript_onnx_exporter_take_torchs_op(tmp_path):
    """Under torch.jit.trace a layer runs torch's op: the trace saves, loads and runs at other
    shapes, and torch.onnx.export(dynamo=False) maps it to ONNX's LSTM with a dynamic batch and
    length, as torch.nn's."""
    import io

    torch.manual_seed(0)
    ours = rnnkit.LSTM(I, H, num_layers=2, batch_first=True)
    ref = nn.LSTM(I, H, num_layers=2, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the shape checks, constant in any trace, and jit's deprecation)
        traced = torch.jit.trace(ours, (x,))
    saved = io.BytesIO()
    torch.jit.save(traced, saved)
    saved.seek(0)
    loaded = torch.jit.load(saved)
    other = torch.randn(5, 11, I)
    torch.testing.assert_close(loaded(other)[0], ref(other)[0], atol=0, rtol=0)
    path = tmp_path / "ts.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ours, (x,), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 1: "length"}})
    assert "LSTM" in onnx_ops(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": other.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref(other)[0].detach(), atol=1e-5, rtol=1e-5)


def test_a_fresh_process_exports_and_another_loads_the_program(tmp_path):
    """torch.export as a process's first use of a layer (the compiled loops must not load while
    the tracer runs), torch.export.save there, and load and run here (rnnkit.kernels registers the
    operator)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, rnnkit\n"
        "torch.manual_seed(0)\n"
        "m = rnnkit.GRU(3, 8, batch_first=True)\n"
        "dims = ({0: torch.export.Dim('b'), 1: torch.export.Dim('t')},)\n"
        "torch.export.save(torch.export.export(m, (torch.randn(2, 5, 3),), dynamic_shapes=dims), sys.argv[1])\n"
        "torch.save(m.state_dict(), sys.argv[2])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "gru.pt2"), str(tmp_path / "gru.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    program = torch.export.load(str(tmp_path / "gru.pt2"))
    layer = rnnkit.GRU(3, 8, batch_first=True)
    layer.load_state_dict(torch.load(tmp_path / "gru.pt", weights_only=True))
    x = torch.randn(4, 9, 3)
    torch.testing.assert_close(program.module()(x)[0], layer(x)[0], atol=1e-6, rtol=1e-6)
