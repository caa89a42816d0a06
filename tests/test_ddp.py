"""Distributed data-parallel training through the real command, 2 CPU processes (gloo): `rnnkit train
--nproc 2` and torchrun itself against one process, resume after a killed rank, Ctrl-C, user errors;
and the sharding arithmetic against the one-process gradient in float64."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import png_is_not_blank, rnnkit_cli
from rnnkit import distributed
from rnnkit.cli import _without_nproc, main
from rnnkit.errors import ConfigError
from rnnkit.runs import CHECKPOINT, WEIGHTS

# 145 training windows, in global batches of 28: five full ones and a last one of 5 rows, which splits
# 2 + 3 (so each rank's loss must be weighted by its share).
TINY = ["--num-samples", "214", "--seq-length", "12", "--hidden-size", "8", "--batch-size", "28"]
TIMEOUT = 180  # a hang fails the test instead of the suite


def weights(directory):
    return load_file(Path(directory) / WEIGHTS)


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def history(directory):
    return json.loads((Path(directory) / "history.json").read_text())


def torchrun(*args, cwd):
    """torch's own launcher, as a user runs it (`torchrun` is this console script)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "rnnkit", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--quiet", "--out", str(out)]) == 0  # in process: one start fewer
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("two")
    proc = rnnkit_cli("train", *TINY, "--epochs", "2", "--log-every", "1", "--nproc", "2", "--out", "run",
                      cwd=cwd, timeout=TIMEOUT)
    return cwd / "run", proc


def test_two_processes_reach_the_weights_of_one(one_process, two_processes):
    out, proc = two_processes
    assert max_abs_diff(weights(out), weights(one_process)) <= 1e-5
    one, two = history(one_process), history(out)
    # The logged losses are the global batch's, as on one process.
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-6)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-6)
    assert (one["processes"], two["processes"], two["device"]) == (1, 2, "cpu")
    # Only rank 0 prints and writes: each line once, nothing on stderr, the files of a one-process run.
    lines = proc.stdout.splitlines()
    assert [line.split(",")[0] for line in lines[:2]] == ["Epoch 1/2", "Epoch 2/2"] and len(lines) == 3, proc.stdout
    assert lines[2].startswith("Trained 2 epochs") and proc.stderr == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one_process.iterdir())


def test_torchrun_itself_then_test_and_visualize(two_processes, tmp_path):
    proc = torchrun("train", *TINY, "--epochs", "2", "--quiet", "--test", "--visualize", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    # The same processes and seed give bitwise the same weights (gloo's all-reduce is deterministic).
    ref = weights(two_processes[0])
    assert all(torch.equal(w, ref[k]) for k, w in weights(out).items())
    assert proc.stdout.count("Test MSE Loss:") == 1 and proc.stdout.count("Trained 2 epochs") == 1
    assert json.loads((out / "metrics.json").read_text())["mse"] > 0
    for name in ("predictions_vs_true.png", "loss_curve.png"):
        assert png_is_not_blank(out / name), name


# ---- failures: a killed rank, Ctrl-C, user errors ----------------------------------------------------

# Batches of 48: 48, 48, 48 and 1, which leaves rank 0 without a row (it runs one with weight 0).
LONG = [*TINY, "--batch-size", "48", "--num-layers", "2", "--dropout", "0.2", "--patience", "4", "--epochs", "30",
        "--quiet"]


def start(args, cwd):
    """`rnnkit train --nproc 2` in its own session, as from a terminal (Ctrl-C reaches its process group)."""
    return subprocess.Popen([sys.executable, "-m", "rnnkit", "train", *args, "--nproc", "2"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def ranks(launcher):
    """{rank: pid} of the launcher's worker processes (torchrun runs in the launcher process)."""
    found = {}
    for task in Path(f"/proc/{launcher.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                       if "=" in item)
            if "RANK" in env:
                found[int(env["RANK"])] = int(pid)
    return found


def wait_for_checkpoint(proc, out, timeout=120.0):
    """Poll (a bounded wait, not a sleep standing in for synchronisation) until the first checkpoint is
    written; both ranks must be running then."""
    deadline = time.monotonic() + timeout
    while not (out / CHECKPOINT).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    found = ranks(proc)
    assert sorted(found) == [0, 1], found
    return found


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks in /proc")


@linux_only
def test_a_killed_rank_stops_all_ranks_and_resume_is_bitwise(tmp_path):
    proc = start([*LONG, "--out", "run"], tmp_path)
    out = tmp_path / "run"
    pids = wait_for_checkpoint(proc, out)
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGKILL
    epoch = json.loads(load_file_header(out / CHECKPOINT)["state"])["loop"]["epoch"]
    assert stderr == (f"error: rank 1 of 2 was killed by SIGKILL; the other ranks were stopped (run keeps the "
                      f"checkpoint of epoch {epoch}: continue with `rnnkit train --resume run --nproc 2`)\n")
    assert not (out / WEIGHTS).exists() and epoch < 30
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # rank 0 was stopped too

    rnnkit_cli("train", "--resume", "run", "--nproc", "2", "--quiet", cwd=tmp_path, timeout=TIMEOUT)
    rnnkit_cli("train", *LONG, "--nproc", "2", "--out", "whole", cwd=tmp_path, timeout=TIMEOUT)
    resumed, whole = weights(out), weights(tmp_path / "whole")
    assert all(torch.equal(w, whole[k]) for k, w in resumed.items())  # dropout masks and early stopping too
    assert history(out)["train_loss"] == history(tmp_path / "whole")["train_loss"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def load_file_header(path):
    data = path.read_bytes()
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]


@linux_only
def test_ctrl_c_stops_every_rank_once(tmp_path):
    proc = start([*LONG, "--out", "run"], tmp_path)
    wait_for_checkpoint(proc, tmp_path / "run")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130 and stderr == "interrupted\n", stderr
    assert (tmp_path / "run" / CHECKPOINT).exists() and not (tmp_path / "run" / WEIGHTS).exists()


@pytest.mark.parametrize("args, match", [
    (["--nproc", "2", "--batch-size", "15"], "--batch-size 15 is the global batch and must split evenly over 2 "
                                             "processes (use a multiple of 2, e.g. 14 or 16)"),
    (["--nproc", "0"], "--nproc must be >= 1"),
    pytest.param(["--nproc", "2", "--device", "cuda"], "--device cuda, but torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param(["--device", "cuda"], "--device cuda, but torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_user_errors_are_one_line_before_anything_starts(tmp_path, args, match):
    proc = rnnkit_cli("train", *TINY, *args, "--out", "run", cwd=tmp_path, check=False, timeout=TIMEOUT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert match in proc.stderr and not (tmp_path / "run").exists()


def test_a_user_error_under_torchrun_is_said_once(tmp_path):
    """Every rank meets it; rank 0 says it, and torchrun's own report follows."""
    proc = torchrun("train", *TINY, "--batch-size", "15", "--out", "run", cwd=tmp_path)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert said == ["error: --batch-size 15 is the global batch and must split evenly over 2 processes "
                    "(use a multiple of 2, e.g. 14 or 16)"], proc.stderr
    assert not (tmp_path / "run").exists()


# ---- in process: the arithmetic, the device and the backend ------------------------------------------

@pytest.mark.parametrize("rows, world", [(6, 2), (5, 2), (1, 2), (7, 3)])
def test_sharded_gradients_average_to_the_global_batch_gradient(monkeypatch, rows, world):
    """What DDP computes, in float64: the average over the ranks of the gradient of each rank's scaled
    loss on its slice is the gradient of the mean loss over the whole batch (uneven and empty slices too)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(rows, 3, dtype=torch.float64), torch.randn(rows, 2, dtype=torch.float64)
    loss_of = lambda x, y: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    expected = torch.autograd.grad(loss_of(x, y), list(model.parameters()))
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    total, logged, seen = [torch.zeros_like(g) for g in expected], 0.0, []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda: r)
        (xs, ys), share = distributed.shard(x, y)
        seen += [] if share == 0 else xs.tolist()
        loss = loss_of(xs, ys)
        grads = torch.autograd.grad(distributed.for_backward(loss, share), list(model.parameters()))
        total = [t + g / world for t, g in zip(total, grads)]  # DDP's average
        logged += share * loss.item()
    for t, g in zip(total, expected):
        torch.testing.assert_close(t, g, rtol=0, atol=1e-12)
    assert logged == pytest.approx(loss_of(x, y).item(), abs=1e-12)
    assert seen == x.tolist()  # each row on exactly one rank, in order


def test_without_nproc():
    argv = ["train", "--epochs", "2", "--nproc", "2", "--out", "r"]
    assert _without_nproc(argv) == ["train", "--epochs", "2", "--out", "r"]
    assert _without_nproc(["train", "--nproc=2", "--npr", "2", "--num-layers", "2"]) == ["train", "--num-layers", "2"]


TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


def test_auto_is_cuda_when_present_and_rank_r_takes_device_r(monkeypatch):
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="device='cuda', but torch sees no CUDA device"):
            distributed.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="3 processes on this machine need one CUDA device each"):
        distributed.resolve_device("auto", local_world=3)  # `rnnkit train --nproc 3` checks before torchrun
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    assert distributed.resolve_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="3 processes on this machine need one CUDA device each"):
        distributed.resolve_device("auto")


@pytest.mark.parametrize("cuda, backend", [(False, "gloo"), (True, "nccl")])
def test_the_backend_is_nccl_on_cuda_and_gloo_on_the_cpu(monkeypatch, cuda, backend):
    import torch.distributed as dist

    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda name: calls.append(name))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroyed"))
    monkeypatch.setattr(distributed, "_first_ctrl_c_stops", lambda: None)  # keep pytest's Ctrl-C
    with distributed.process_group("auto") as device:
        assert device == (torch.device("cuda", 1) if cuda else torch.device("cpu"))
    assert calls == [backend, "destroyed"]
