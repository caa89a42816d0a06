"""Drop-in wherever torch.nn works: one matrix of cell × engine × mode against torch.nn.

Modes: eager; torch.compile (fullgraph; AOTAutograd's eager backend for the fused engine: the
graph capture, fake tensors and autograd of its operators without inductor's code generation,
which test_compile_with_inductor_keeps_the_fused_layer_one_node runs once); torch.export (dynamic batch, run at another);
torch.onnx.export itself (dynamic batch, run in onnxruntime); torch.func.grad; create_graph (a
gradient penalty); autocast to bfloat16 on the CPU. Each case is either torch.nn's answer (outputs,
states and gradients) or, where the engine asked for cannot serve, one RnnkitError that says so.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

import rnnkit
from conftest import ENGINES_UNDER_TEST
from rnnkit.errors import RnnkitError

pytestmark = pytest.mark.usefixtures("single_thread")

B, T, I, H = 3, 4, 2, 5
CELLS = {"rnn": (nn.RNN, rnnkit.RNN), "lstm": (nn.LSTM, rnnkit.LSTM), "gru": (nn.GRU, rnnkit.GRU)}
MODES = ("eager", "compile", "export", "onnx", "func.grad", "create_graph", "autocast")


def pair(cell: str, engine: str, dtype=torch.float64):
    """torch.nn's layer and rnnkit's with its weights: 2 layers, bidirectional, batch-first."""
    torch_cls, ours_cls = CELLS[cell]
    torch.manual_seed(0)
    ref = torch_cls(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype)
    ours = ours_cls(I, H, num_layers=2, bidirectional=True, batch_first=True, engine=engine, dtype=dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def flat(result) -> list:
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def outputs_and_grads(layer: nn.Module, x: torch.Tensor) -> list:
    """Outputs, final states, and the gradients of the input and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    results = flat(layer(x))
    loss = sum((r * torch.linspace(-1, 1, r.numel(), dtype=r.dtype).view(r.shape)).sum() for r in results)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    return [r.detach() for r in results] + list(grads)


def assert_all_close(got: list, want: list, tol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=tol, rtol=tol)


def refuses(engine: str, cell: str, mode: str) -> bool:
    """Where the engine asked for cannot give torch.nn's answer and says so: the fused engine under
    a functorch transform, inside torch.onnx.export (use rnnkit.export.to_onnx), and under an
    autocast that torch.nn's op follows into bfloat16 (its LSTM's and RNN's on the CPU)."""
    return engine == "fused" and (mode in ("func.grad", "onnx") or (mode == "autocast" and cell != "gru"))


def run_mode(mode: str, ref: nn.Module, ours: nn.Module, tmp_path):
    x = torch.randn(B, T, I, dtype=torch.float64)
    if mode == "eager":  # (the torch engine: torch.nn's own op, bit for bit)
        assert_all_close(outputs_and_grads(ours, x), outputs_and_grads(ref, x), 0 if ours.engine == "torch" else 1e-10)
    elif mode == "compile":
        torch._dynamo.reset()
        # The fused engine's operators through AOTAutograd; the loop and torch's op (no operator of
        # rnnkit's) through the graph capture alone, which is where they could break.
        backend = "aot_eager" if ours.engine in ("auto", "fused") else "eager"
        compiled = torch.compile(ours, backend=backend, fullgraph=True)
        for b in (B, B + 2):  # a second call, at another batch size
            xb = torch.randn(b, T, I, dtype=torch.float64)
            assert_all_close(outputs_and_grads(compiled, xb), outputs_and_grads(ref, xb), 1e-10)
    elif mode == "export":
        program = torch.export.export(ours, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        other = torch.randn(B + 3, T, I, dtype=torch.float64)
        assert_all_close(flat(program.module()(other)), [t.detach() for t in flat(ref(other))], 1e-10)
    elif mode == "onnx":
        import onnxruntime

        ref, ours = ref.float().eval(), ours.float().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(ours, (x.float(),), dynamo=True, input_names=["x"], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
        program.save(str(tmp_path / "m.onnx"))
        session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        other = torch.randn(B + 3, T, I)
        got = [torch.from_numpy(a) for a in session.run(None, {"x": other.numpy()})]
        assert_all_close(got, [t.detach() for t in flat(ref(other))], 1e-5)
    elif mode == "func.grad":
        def loss(layer, params, inp):
            return sum(r.square().sum() for r in flat(functional_call(layer, params, (inp,))))

        grads = [torch.func.grad(loss, argnums=(1, 2))(layer, dict(layer.named_parameters()), x)
                 for layer in (ours, ref)]
        assert_all_close([*grads[0][0].values(), grads[0][1]], [*grads[1][0].values(), grads[1][1]], 1e-10)
    elif mode == "create_graph":
        def penalized(layer):
            inp = x.clone().requires_grad_(True)
            out = layer(inp)[0]
            (g,) = torch.autograd.grad(out.square().sum(), inp, create_graph=True)
            return torch.autograd.grad(g.square().sum() + out.sum(), list(layer.parameters()))

        assert_all_close(list(penalized(ours)), list(penalized(ref)), 1e-10)
    else:  # autocast
        ref, ours = ref.float(), ours.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = flat(ref(x.float())), flat(ours(x.float()))
        exact = ours.engine in ("auto", "torch")  # torch's op, as torch.nn's
        assert_all_close([g.detach() for g in got], [w.detach() for w in want], 0 if exact else 0.05)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ENGINES_UNDER_TEST)
@pytest.mark.parametrize("cell", CELLS)
def test_dropin(cell, engine, mode, tmp_path):
    ref, ours = pair(cell, engine)
    if refuses(engine, cell, mode):
        with pytest.raises(Exception) as err:  # (torch's exporter wraps what the layer raised)
            run_mode(mode, ref, ours, tmp_path)
        chain, e = [], err.value
        while e is not None:
            chain.append(e)
            e = e.__cause__ or e.__context__
        assert any(isinstance(e, RnnkitError) and "engine='fused'" in str(e) for e in chain), err.value
    else:
        run_mode(mode, ref, ours, tmp_path)


def test_compile_with_inductor_keeps_the_fused_layer_one_node():
    """The issue's case: torch.compile(rnnkit.LSTM(3, 32, batch_first=True)), called again and at
    other shapes, with fullgraph=True, forward and backward, equal to eager."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 32, batch_first=True)
    ref = nn.LSTM(3, 32, batch_first=True)
    ref.load_state_dict(layer.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for b, t in ((4, 7), (4, 7), (6, 9)):
        x = torch.randn(b, t, 3)
        assert_all_close(outputs_and_grads(compiled, x), outputs_and_grads(ref, x), 1e-5)


def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu.py, which a lent GPU runs, in its CPU mode: the torch engine bit for bit
    torch.nn's, the triton engine (in Triton's interpreter) and the reference loop close to their
    oracle (torch.nn; the reference loop for the reset-before GRU, which torch.nn lacks), every time
    positive."""
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_benchmark", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--device", "cpu", "--quick", "--sizes", "4x5x8", "--cells", "lstm,gru_rb",
                        "--json", str(tmp_path / "gpu.json")]) == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    triton = ["triton"] if importlib.util.find_spec("triton") else []
    assert [(r["cell"], r["impl"]) for r in rows] == (
        [("lstm", i) for i in ("torch-engine", *triton, "reference", "torch.nn")]
        + [("gru_rb", i) for i in (*triton, "reference", "torch.nn")])
    for r in rows:
        assert r["train_ms"] > 0 and r["infer_ms"] > 0
        if r["impl"] == r["oracle"]:
            continue
        if r["cell"] == "gru_rb" and r["impl"] == "torch.nn":  # (another function: timed, not checked)
            assert r["max_abs_diff"] is None
        else:
            assert r["bitwise"] if r["impl"] == "torch-engine" else r["max_abs_diff"] < 1e-5
