"""rnnkit.RNN / LSTM / GRU against torch.nn in float64: outputs, final states, input and parameter
gradients after a state_dict copy either way; gradcheck; GRU reset_after=False against its equations;
dropout; errors."""

import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from conftest import DOUBLE, ENGINES_UNDER_TEST, assert_close, cotangent, param_grads

pytestmark = pytest.mark.usefixtures("single_thread")

B, T, I, H = 3, 5, 4, 6

# name -> (torch.nn class, rnnkit class, extra constructor arguments)
KINDS = {
    "rnn_tanh": (nn.RNN, rnnkit.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, rnnkit.LSTM, {}),
    "gru": (nn.GRU, rnnkit.GRU, {}),
}
COPIES = ("torch_to_rnnkit", "rnnkit_to_torch")


def make_pair(kind: str, copy: str, engine: str = "auto", **kw):
    """A torch.nn layer and an rnnkit layer with the same weights, copied by state_dict (strict)."""
    torch_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    ref = torch_cls(I, H, dtype=DOUBLE, **extra, **kw)
    ours = ours_cls(I, H, dtype=DOUBLE, engine=engine, **extra, **kw)
    if copy == "torch_to_rnnkit":
        ours.load_state_dict(ref.state_dict(), strict=True)
    else:
        ref.load_state_dict(ours.state_dict(), strict=True)
    return ref, ours


def random_hx(kind: str, shape: tuple):
    torch.manual_seed(1)
    if kind == "lstm":
        return (torch.randn(shape, dtype=DOUBLE), torch.randn(shape, dtype=DOUBLE))
    return torch.randn(shape, dtype=DOUBLE)


def run(model, x, hx, pack=None) -> dict:
    """Forward and backward of sum(outputs * fixed cotangents); returns every number to compare.

    pack: None, or (lengths, enforce_sorted) to feed x (T, B, I) as a PackedSequence.
    """
    x = x.detach().clone().requires_grad_(True)
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_(True) for h in hx) if isinstance(hx, tuple) \
            else hx.detach().clone().requires_grad_(True)
    inp = x if pack is None else pack_padded_sequence(x, pack[0], enforce_sorted=pack[1])
    out, h_n = model(inp, hx)
    result = {}
    if pack is not None:
        result.update(batch_sizes=out.batch_sizes, sorted_indices=out.sorted_indices,
                      unsorted_indices=out.unsorted_indices)
        out = out.data
    states = h_n if isinstance(h_n, tuple) else (h_n,)
    loss = (out * cotangent(out)).sum() + sum((s * cotangent(s)).sum() for s in states)
    loss.backward()
    result.update(output=out.detach(), x_grad=x.grad)
    result.update({f"state{k}": s.detach() for k, s in enumerate(states)})
    if hx is not None:
        result.update({f"hx_grad{k}": h.grad for k, h in enumerate(hx if isinstance(hx, tuple) else (hx,))})
    result.update({f"grad.{n}": g for n, g in param_grads(model).items()})
    return result


def assert_same_results(ours: dict, ref: dict, exact: bool = False) -> None:
    """Every number within 1e-10, or bit for bit with ``exact`` (the torch engine: torch.nn's own op)."""
    assert list(ours) == list(ref)
    for key in ref:
        if ref[key] is None:
            assert ours[key] is None, key
        elif exact:
            assert torch.equal(ours[key], ref[key]), key
        else:
            assert ours[key] is not None, key
            assert_close(ours[key], ref[key])


def check_dense(kind, num_layers, bidirectional, batch_first, bias, given_hx, copy, engine):
    ref, ours = make_pair(kind, copy, engine, num_layers=num_layers, bidirectional=bidirectional,
                          batch_first=batch_first, bias=bias)
    torch.manual_seed(2)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=DOUBLE)
    D = 2 if bidirectional else 1
    hx = random_hx(kind, (num_layers * D, B, H)) if given_hx else None
    got, want = run(ours, x, hx), run(ref, x, hx)
    assert got["output"].shape == ((B, T, D * H) if batch_first else (T, B, D * H))
    assert_same_results(got, want, exact=engine == "torch")


@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_matches_torch(kind, num_layers, bidirectional, batch_first, bias, given_hx, engine):
    check_dense(kind, num_layers, bidirectional, batch_first, bias, given_hx, "torch_to_rnnkit", engine)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_weights_copied_to_torch_match(kind, num_layers, bidirectional, bias, engine):
    """The other direction: rnnkit's own initialised weights, loaded into torch.nn (strict)."""
    check_dense(kind, num_layers, bidirectional, True, bias, True, "rnnkit_to_torch", engine)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_matches_torch(kind, bidirectional, enforce_sorted, given_hx, copy, engine):
    num_layers = 2
    ref, ours = make_pair(kind, copy, engine, num_layers=num_layers, bidirectional=bidirectional)
    # Distinct lengths including the full T and a single step; unsorted ones exercise the permutation.
    lengths = torch.tensor([5, 3, 1] if enforce_sorted else [3, 5, 1])
    torch.manual_seed(2)
    x = torch.randn(T, B, I, dtype=DOUBLE)
    hx = random_hx(kind, (num_layers * (2 if bidirectional else 1), B, H)) if given_hx else None
    pack = (lengths, enforce_sorted)
    assert_same_results(run(ours, x, hx, pack), run(ref, x, hx, pack), exact=engine == "torch")


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_matches_torch(kind, bidirectional, batch_first, given_hx, copy, engine):
    num_layers = 2
    ref, ours = make_pair(kind, copy, engine, num_layers=num_layers, bidirectional=bidirectional,
                          batch_first=batch_first)
    torch.manual_seed(2)
    x = torch.randn(T, I, dtype=DOUBLE)  # (T, I) whatever batch_first says, as in torch.nn
    D = 2 if bidirectional else 1
    hx = random_hx(kind, (num_layers * D, H)) if given_hx else None
    got, want = run(ours, x, hx), run(ref, x, hx)
    assert got["output"].shape == (T, D * H)
    assert_same_results(got, want, exact=engine == "torch")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_keys_shapes_and_order_match_torch(kind, num_layers, bidirectional, bias):
    torch_cls, ours_cls, extra = KINDS[kind]
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, **extra)
    want = torch_cls(I, H, **kw).state_dict()
    got = ours_cls(I, H, **kw).state_dict()
    assert list(got) == list(want)
    assert [v.shape for v in got.values()] == [v.shape for v in want.values()]
    assert [v.dtype for v in got.values()] == [v.dtype for v in want.values()]


@pytest.mark.parametrize("kind", KINDS)
def test_init_is_uniform_within_one_over_sqrt_hidden(kind):
    _, ours_cls, extra = KINDS[kind]
    hidden = 25
    torch.manual_seed(0)
    values = torch.cat([p.detach().flatten() for p in ours_cls(30, hidden, num_layers=2, **extra).parameters()])
    bound = 1 / math.sqrt(hidden)
    assert values.abs().max() <= bound
    # U(-b, b): half the mass within b/2, and the extremes reached (thousands of draws).
    assert abs((values.abs() < bound / 2).double().mean().item() - 0.5) < 0.05
    assert values.abs().max() > 0.95 * bound
    assert abs(values.mean().item()) < 0.05 * bound


# ---- gradcheck -----------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("kind", [*KINDS, "gru_reset_before"])
@pytest.mark.parametrize("engine", [e for e in ENGINES_UNDER_TEST if e != "auto"])  # auto is one of them
def test_layer_gradcheck(kind, packed, engine):
    """Input, hx and every parameter against finite differences, 2 layers, both directions."""
    if kind == "gru_reset_before" and engine == "torch":
        pytest.skip("torch has no op for GRU reset_after=False (test_torch_engine_refuses_reset_before)")
    torch_kind, extra = (kind, {}) if kind != "gru_reset_before" else ("gru", {"reset_after": False})
    _, ours_cls, base = KINDS[torch_kind]
    b, t, i, h = 2, 3, 2, 2
    torch.manual_seed(0)
    model = ours_cls(i, h, num_layers=2, bidirectional=True, dtype=DOUBLE, engine=engine, **base, **extra)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    x = torch.randn(t, b, i, dtype=DOUBLE, requires_grad=True)
    hs = [torch.randn(4, b, h, dtype=DOUBLE, requires_grad=True) for _ in range(2 if kind == "lstm" else 1)]
    lengths = torch.tensor([3, 1])

    def f(x, *rest):
        hx = rest[: len(hs)]
        inp = pack_padded_sequence(x, lengths) if packed else x
        out, h_n = functional_call(model, dict(zip(names, rest[len(hs):])), (inp, hx if kind == "lstm" else hx[0]))
        return (out.data if packed else out), *(h_n if isinstance(h_n, tuple) else (h_n,))

    assert torch.autograd.gradcheck(f, (x, *hs, *params), fast_mode=True)


# ---- GRU reset_after=False against its equations, written here ----------------------------------

def gru_reset_before_step(x, h, W_ih, W_hh, b_ih, b_hh):
    """Cho et al. 2014: the reset gate multiplies h before the recurrent matrix."""
    Hs = h.shape[-1]
    W_ir, W_iz, W_in = W_ih[:Hs], W_ih[Hs:2 * Hs], W_ih[2 * Hs:]
    W_hr, W_hz, W_hn = W_hh[:Hs], W_hh[Hs:2 * Hs], W_hh[2 * Hs:]
    b_ir, b_iz, b_in = b_ih[:Hs], b_ih[Hs:2 * Hs], b_ih[2 * Hs:]
    b_hr, b_hz, b_hn = b_hh[:Hs], b_hh[Hs:2 * Hs], b_hh[2 * Hs:]
    r = torch.sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z = torch.sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
    n = torch.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
    return (1 - z) * n + z * h


def test_torch_engine_refuses_reset_before():
    with pytest.raises(rnnkit.RnnkitError, match="engine='torch' runs the layers torch.nn has"):
        rnnkit.GRU(I, H, reset_after=False, engine="torch")(torch.randn(T, B, I))


def test_gru_reset_before_layer_matches_its_equations(engine):
    """A 2-layer bidirectional GRU(reset_after=False) against an explicit loop over its equations."""
    if engine == "torch":
        pytest.skip("torch has no op for GRU reset_after=False (test_torch_engine_refuses_reset_before)")
    layers = 2
    torch.manual_seed(0)
    model = rnnkit.GRU(I, H, num_layers=layers, bidirectional=True, reset_after=False, dtype=DOUBLE,
                       engine=engine)
    x = torch.randn(T, B, I, dtype=DOUBLE)
    h0 = torch.randn(2 * layers, B, H, dtype=DOUBLE)
    p = dict(model.named_parameters())

    seq = list(x)  # T tensors of (B, I)
    finals = []
    for layer in range(layers):
        per_direction = []
        for d, suffix in enumerate(("", "_reverse")):
            w = [p[f"{name}_l{layer}{suffix}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h = h0[2 * layer + d]
            outs = [None] * T
            for t in (range(T) if d == 0 else reversed(range(T))):
                h = gru_reset_before_step(seq[t], h, *w)
                outs[t] = h
            per_direction.append(outs)
            finals.append(h)
        seq = [torch.cat([per_direction[0][t], per_direction[1][t]], dim=-1) for t in range(T)]
    want_out, want_h = torch.stack(seq), torch.stack(finals)
    want_grads = torch.autograd.grad((want_out * cotangent(want_out)).sum() + (want_h * cotangent(want_h)).sum(),
                                     list(p.values()))

    out, h_n = model(x, h0)
    got_grads = torch.autograd.grad((out * cotangent(out)).sum() + (h_n * cotangent(h_n)).sum(), list(p.values()))
    assert_close(out, want_out)
    assert_close(h_n, want_h)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w)
    # reset_after matters: torch.nn's GRU (reset_after=True) with the same weights is another function.
    other = nn.GRU(I, H, num_layers=layers, bidirectional=True, dtype=DOUBLE)
    other.load_state_dict(model.state_dict(), strict=True)
    assert not torch.allclose(other(x, h0)[0], want_out)


@pytest.mark.parametrize("kind", KINDS)
def test_a_parametrized_weight_is_the_one_the_layer_runs(kind, engine):
    """The layers read their weights straight from their parameters; a parametrization takes one out
    of them (torch.nn.utils.parametrize), and the layer must then run the parametrized weight, and
    give the gradient to the parametrization's original."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, W):
            return 2 * W

    _, ours_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    ours = ours_cls(I, H, dtype=DOUBLE, engine=engine, **extra)
    plain = ours_cls(I, H, dtype=DOUBLE, engine=engine, **extra)
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(2)
    parametrize.register_parametrization(ours, "weight_hh_l0", Doubled())
    x = torch.randn(T, B, I, dtype=DOUBLE)
    out = ours(x)[0]
    assert_close(out, plain(x)[0])
    out.sum().backward()
    assert ours.parametrizations.weight_hh_l0.original.grad is not None


# ---- dropout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_dropout_between_layers_in_train_only(kind, engine):
    torch_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    ours = ours_cls(I, H, num_layers=2, dropout=0.5, dtype=DOUBLE, engine=engine, **extra)
    ref = torch_cls(I, H, num_layers=2, dropout=0.5, dtype=DOUBLE, **extra)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(T, B, I, dtype=DOUBLE)

    ours.train()
    first, second = ours(x)[0], ours(x)[0]
    assert not torch.equal(first, second)
    ours.eval()
    ref.eval()
    evaluated = ours(x)[0]
    assert not torch.allclose(first, evaluated)
    assert_close(evaluated, ref(x)[0])
    assert torch.equal(ours(x)[0], evaluated)


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_is_not_applied_after_the_last_layer(kind, engine):
    """As torch.nn: dropout acts between layers, so a one-layer model is the same in train and eval."""
    _, ours_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    ours = ours_cls(I, H, num_layers=1, dropout=0.5, dtype=DOUBLE, engine=engine, **extra)
    x = torch.randn(T, B, I, dtype=DOUBLE)
    assert torch.equal(ours.train()(x)[0], ours.eval()(x)[0])


# ---- errors and repr ------------------------------------------------------------------------------

def raises_user_error(match: str):
    """An RnnkitError (so the CLI prints one line) that is also a ValueError, saying ``match``."""
    return pytest.raises(rnnkit.RnnkitError, match=match)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_input_rank_says_the_expected_shape(kind):
    _, ours_cls, extra = KINDS[kind]
    model = ours_cls(I, H, **extra)
    for bad in (torch.randn(2, 3, 4, I), torch.randn(I)):
        with raises_user_error(r"\(seq_len, batch, input_size\)") as err:
            model(bad)
        assert isinstance(err.value, ValueError)
        assert str(tuple(bad.shape)) in str(err.value)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_wrong_feature_size_says_the_expected_size(kind, batched):
    _, ours_cls, extra = KINDS[kind]
    with raises_user_error(f"input_size={I}") as err:
        ours_cls(I, H, **extra)(torch.randn(T, B, I + 1) if batched else torch.randn(T, I + 1))
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_wrong_hx_shape_says_the_expected_shape(kind, batched):
    _, ours_cls, extra = KINDS[kind]
    model = ours_cls(I, H, num_layers=2, bidirectional=True, **extra)
    x, want = (torch.randn(T, B, I), (4, B, H)) if batched else (torch.randn(T, I), (4, H))
    for bad_shape in ((2, B, H), (4, B + 1, H), (4, B, H + 1), (4, H), (4, B, H, 1)):
        if bad_shape == want:
            continue
        bad = torch.randn(bad_shape)
        good = torch.randn(want)
        for hx in ([(bad, good), (good, bad)] if kind == "lstm" else [bad]):
            with raises_user_error(str(want).replace("(", r"\(").replace(")", r"\)")) as err:
                model(x, hx)
            assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_hx_dtype_must_match_the_input(kind, engine):
    _, ours_cls, extra = KINDS[kind]
    h = torch.zeros(1, B, H, dtype=DOUBLE)
    with raises_user_error("h_0 dtype torch.float64 does not match the input's torch.float32") as err:
        ours_cls(I, H, engine=engine, **extra)(torch.randn(T, B, I), (h, h) if kind == "lstm" else h)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("hx", ["tensor", "triple", "single"])
def test_lstm_hx_must_be_a_pair(hx):
    model = rnnkit.LSTM(I, H)
    h = torch.zeros(1, B, H)
    bad = {"tensor": h, "triple": (h, h, h), "single": (h,)}[hx]
    with raises_user_error(r"\(h_0, c_0\)") as err:
        model(torch.randn(T, B, I), bad)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("kwargs, match", [
    ({"nonlinearity": "sigmoid"}, "tanh, relu"),
    ({"num_layers": 0}, "num_layers"),
    ({"num_layers": -1}, "num_layers"),
    ({"num_layers": 1.5}, "num_layers"),
    ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\]"),
    ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\]"),
    ({"dropout": "0.5"}, r"dropout must be a number in \[0, 1\]"),
    ({"engine": "warp"}, "reference"),
])
def test_bad_constructor_arguments(kwargs, match):
    with raises_user_error(match) as err:
        rnnkit.RNN(I, H, **kwargs)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("sizes", [(0, H), (I, 0), (-1, H), (I, 2.0)])
def test_bad_sizes(sizes):
    with raises_user_error("must be a positive integer") as err:
        rnnkit.GRU(*sizes)
    assert isinstance(err.value, ValueError)


def test_repr_matches_torch_from_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", "import rnnkit; print(rnnkit.LSTM(1, 8))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(nn.LSTM(1, 8))


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bias": False, "batch_first": True,
                                         "dropout": 0.5, "bidirectional": True}])
@pytest.mark.parametrize("kind", KINDS)
def test_repr_matches_torch(kind, kwargs):
    torch_cls, ours_cls, extra = KINDS[kind]
    got = repr(ours_cls(I, H, **extra, **kwargs))
    if kind == "rnn_relu":  # torch.nn leaves the nonlinearity out of the repr; rnnkit says it
        assert ", nonlinearity='relu'" in got
        got = got.replace(", nonlinearity='relu'", "")
    assert got == repr(torch_cls(I, H, **extra, **kwargs))


# ---- LSTM projections (proj_size) -----------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("engine", ["auto", "torch", "reference"])  # the fused engine has none
def test_lstm_projection_matches_torch(engine, given_hx, packed):
    P = 3
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=DOUBLE)
    ours = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=DOUBLE, engine=engine)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.engine = "auto"  # (the repr names any other engine)
    assert repr(ours) == repr(ref)
    ours.engine = engine
    torch.manual_seed(2)
    x = torch.randn(T, B, I, dtype=DOUBLE)
    hx = (torch.randn(4, B, P, dtype=DOUBLE), torch.randn(4, B, H, dtype=DOUBLE)) if given_hx else None
    pack = (torch.tensor([5, 3, 1]), True) if packed else None
    got, want = run(ours, x, hx, pack), run(ref, x, hx, pack)
    assert got["state0"].shape == (4, B, P) and got["state1"].shape == (4, B, H)
    assert_same_results(got, want, exact=engine != "reference")


def test_lstm_projection_errors():
    with raises_user_error(r"proj_size must be an integer in \[0, hidden_size=6\)"):
        rnnkit.LSTM(I, H, proj_size=H)
    with raises_user_error("engine='fused' does not run LSTM with proj_size"):
        rnnkit.LSTM(I, H, proj_size=2, engine="fused")(torch.randn(T, B, I))
    with raises_user_error(r"h_0 of shape \(1, 3, 2\) \(num_layers\*num_directions, batch, proj_size\)"):
        rnnkit.LSTM(I, H, proj_size=2)(torch.randn(T, B, I), (torch.zeros(1, B, H), torch.zeros(1, B, H)))


def test_engine_errors_name_the_callers_shape():
    """The layer runs batch-first inside; its errors speak of the input as the caller gave it."""
    layer = rnnkit.GRU(I, H, engine="fused", dtype=torch.float16)
    with raises_user_error(rf"torch.float16 on cpu, input of shape \({T}, {B}, {I}\)"):
        layer(torch.randn(T, B, I, dtype=torch.float16))
    with raises_user_error(rf"input of shape \({T}, {I + 1}\) has {I + 1} features"):
        rnnkit.GRU(I, H)(torch.randn(T, I + 1))
