"""rnnkit.CustomRNN against the seed's model, written out here: equations, parameters, state_dict,
initialisation, save/load, errors."""

import math

import pytest
import torch
from torch import nn

import rnnkit
from conftest import DOUBLE, ENGINES_UNDER_TEST, assert_close, cotangent, param_grads

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(params=[e for e in ENGINES_UNDER_TEST if e != "torch"])  # torch has no op for it
def engine(request) -> str:
    return request.param

B, T, I, H, O = 3, 5, 4, 6, 2
SEED_PARAMS = [("W_ih", (I, H)), ("W_hh", (H, H)), ("W_ho", (H, O)), ("bias_h", (H,)), ("bias_o", (O,))]


class SeedModel(nn.Module):
    """The seed's CustomRNN (rnn_custom_pytorch/model.py), restated: its parameters, init and loop."""

    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.W_ih = nn.Parameter(torch.empty(input_size, hidden_size))
        self.W_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.W_ho = nn.Parameter(torch.empty(hidden_size, output_size))
        self.bias_h = nn.Parameter(torch.zeros(hidden_size))
        self.bias_o = nn.Parameter(torch.zeros(output_size))
        for W in (self.W_ih, self.W_hh, self.W_ho):
            nn.init.kaiming_uniform_(W, a=math.sqrt(5))

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.W_hh.shape[0], dtype=x.dtype)  # h_0 = 0
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] @ self.W_ih + h @ self.W_hh + self.bias_h)
        return h @ self.W_ho + self.bias_o


def random_weights(model: nn.Module) -> nn.Module:
    """Nonzero biases too, so every term of the equations shows in the output."""
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("copy", ["seed_to_rnnkit", "rnnkit_to_seed"])
def test_matches_the_seed_equations(copy, engine):
    torch.manual_seed(0)
    seed = random_weights(SeedModel(I, H, O).to(DOUBLE))
    ours = random_weights(rnnkit.CustomRNN(I, H, O, engine=engine).to(DOUBLE))
    if copy == "seed_to_rnnkit":
        ours.load_state_dict(seed.state_dict(), strict=True)
    else:
        seed.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(B, T, I, dtype=DOUBLE)
    results = []
    for model in (ours, seed):
        xg = x.clone().requires_grad_(True)
        y = model(xg)
        (y * cotangent(y)).sum().backward()
        results.append((y.detach(), xg.grad, param_grads(model)))
    (y, x_grad, grads), (want_y, want_x_grad, want_grads) = results
    assert y.shape == (B, O)
    assert_close(y, want_y)
    assert_close(x_grad, want_x_grad)
    assert list(grads) == list(want_grads)
    for name in want_grads:
        assert_close(grads[name], want_grads[name])


def test_parameters_are_the_seeds():
    model = rnnkit.CustomRNN(I, H, O)
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == SEED_PARAMS
    assert [(n, tuple(v.shape)) for n, v in model.state_dict().items()] == SEED_PARAMS


def test_same_torch_seed_gives_the_seeds_weights():
    torch.manual_seed(7)
    want = SeedModel(I, H, O).state_dict()
    torch.manual_seed(7)
    got = rnnkit.CustomRNN(I, H, O).state_dict()
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_init_zero_biases_and_kaiming_uniform_bounds():
    i, h, o = 20, 32, 16
    torch.manual_seed(0)
    model = rnnkit.CustomRNN(i, h, o)
    assert torch.equal(model.bias_h, torch.zeros(h))
    assert torch.equal(model.bias_o, torch.zeros(o))
    gain = math.sqrt(2 / (1 + 5))  # leaky_relu gain with a = sqrt(5)
    for name in ("W_ih", "W_hh", "W_ho"):
        W = getattr(model, name).detach()
        fan_in = W.shape[1]  # torch's fan_in of a 2-D tensor is its second dimension
        bound = gain * math.sqrt(3 / fan_in)
        assert W.abs().max() <= bound, name
        assert W.abs().max() > 0.95 * bound, name  # hundreds of U(-b, b) draws reach near b
        assert abs((W.abs() < bound / 2).double().mean().item() - 0.5) < 0.1, name


def test_save_and_load_weights_only_round_trip(tmp_path, engine):
    torch.manual_seed(0)
    model = random_weights(rnnkit.CustomRNN(I, H, O, engine=engine))
    path = tmp_path / "rnn_custom_model.pth"
    torch.save(model.state_dict(), path)
    restored = rnnkit.CustomRNN(I, H, O, engine=engine)
    restored.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(B, T, I)
    assert torch.equal(restored(x), model(x))
    seed = SeedModel(I, H, O)
    seed.load_state_dict(torch.load(path, weights_only=True), strict=True)
    torch.testing.assert_close(seed(x), model(x))


@pytest.mark.parametrize("engine", ["auto", "reference"])  # the engines that take every input
def test_empty_sequence_reads_out_the_zero_state(engine):
    """T = 0: the seed's loop never runs, so the output is h_0 @ W_ho + bias_o = bias_o."""
    torch.manual_seed(0)
    model = random_weights(rnnkit.CustomRNN(I, H, O, engine=engine))
    assert_close(model(torch.zeros(B, 0, I)), model.bias_o.detach().expand(B, O))


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(T, I), (B, T, I, 1), (B, T, I + 1)])
def test_wrong_input_shape_says_the_expected_shape(shape):
    with pytest.raises(rnnkit.RnnkitError) as err:
        rnnkit.CustomRNN(I, H, O)(torch.randn(shape))
    assert isinstance(err.value, ValueError)
    assert f"(batch, seq_len, {I})" in str(err.value)
    assert str(shape) in str(err.value)


@pytest.mark.parametrize("sizes, name", [((0, H, O), "input_size"), ((I, 0, O), "hidden_size"),
                                         ((I, H, 0), "output_size"), ((I, H, 1.5), "output_size")])
def test_bad_sizes_name_the_argument(sizes, name):
    with pytest.raises(rnnkit.RnnkitError, match=f"{name} must be a positive integer") as err:
        rnnkit.CustomRNN(*sizes)
    assert isinstance(err.value, ValueError)


def test_the_torch_engine_says_it_has_no_op_for_the_seeds_model():
    with pytest.raises(rnnkit.RnnkitError, match="engine='torch' runs the layers torch.nn has"):
        rnnkit.CustomRNN(I, H, O, engine="torch")(torch.randn(B, T, I))


def test_unknown_engine():
    with pytest.raises(rnnkit.RnnkitError, match="unknown engine 'warp'") as err:
        rnnkit.CustomRNN(I, H, O, engine="warp")
    assert isinstance(err.value, ValueError)
