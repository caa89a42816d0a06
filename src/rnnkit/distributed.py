"""Data-parallel training on several processes: torch.distributed's DistributedDataParallel (DDP),
started by torchrun. ``rnnkit train --nproc N`` runs torchrun for you.

    rnnkit train --nproc 2 --out runs/ddp
    torchrun --standalone --nproc-per-node=2 -m rnnkit train --out runs/ddp      # the same

N processes ("ranks") train one model and reach the weights one process reaches, up to the order of
float additions:

- Data: every rank runs the same seeded, shuffled loader, so it draws the global batch one process
  would draw, and keeps its contiguous slice: rows [r*m//N, (r+1)*m//N) of a batch of m rows.
  --batch-size is the global batch and must be a multiple of N, so every full batch splits evenly.
  The epoch's last, shorter batch splits as evenly as it can; a rank left without a row of it runs
  the batch's first row with weight 0, so that every rank joins every gradient all-reduce.
- Gradients: rank r's loss is the mean over its m_r rows and DDP averages gradients over the ranks,
  so each rank scales its loss by N*m_r/m first: the average is then the gradient of the mean over
  the global batch, the one-process gradient. Clipping and Adam see the same gradient on every rank.
- Losses: an epoch's training loss is the mean of its global batch losses (all-reduced); rank 0
  computes the validation loss and broadcasts it, so every rank makes the same early-stopping and
  schedule decisions, and the printed numbers mean what they mean on one process.
- Dropout: rank r draws its masks from torch's generator seeded by (seed, epoch, r), so the ranks'
  masks differ and a resumed run draws the same ones. (With dropout, N processes do not reproduce
  one process's masks; without it, the default, they reproduce its weights.)
- Files: only rank 0 writes the run directory and prints; to resume, every rank reads the checkpoint
  (one machine, or a run directory on a shared filesystem).
- Failures: a user error is the same on every rank (every check runs on the same inputs or on
  all-reduced values), so rank 0 says it, as one process would. A crash or a killed rank makes torchrun
  stop the others; every failing rank records its message in torchrun's error file, from which
  ``rnnkit train --nproc`` names the rank that failed first and why. A rank that fails only because a
  peer left says nothing. Ctrl-C stops every rank at once (torchrun forwards it to each rank, so
  there is no "finish the epoch" under DDP); the last checkpoint is kept for --resume.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NoReturn

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


# ---- where this process stands (no torch needed) --------------------------------------------------

def in_worker() -> bool:
    """Started by torchrun (or any launcher that sets torch's env:// variables)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def leave(code: int) -> NoReturn:
    """End a torchrun worker with ``code`` without the interpreter's shutdown. torch's distributed
    C++ objects that outlive the process group (gloo's and the store's threads) can abort a process
    while the interpreter and the C++ statics are torn down ("terminate called without an active
    exception"), which turned finished runs into a failed rank in tests/test_ddp.py (3 full-suite
    runs in 9). Everything a run writes is closed by the time main() returns; the standard streams
    and logging are flushed here."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def env_rank() -> int | None:
    """This process's global rank under torchrun, else None."""
    return int(os.environ["RANK"]) if in_worker() else None


def speaks() -> bool:
    """Whether this process prints results and errors: a single process, or rank 0."""
    return env_rank() in (None, 0)


def check_world(nproc: int | None, batch_size: int) -> int:
    """The number of processes that will train (``--nproc``, or torchrun's), checked against the
    global batch. ConfigError when they do not fit."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])) if in_worker() else None
    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if local is not None and nproc is not None and nproc != local:
        raise ConfigError(f"--nproc {nproc} starts torchrun itself, but torchrun already started {local} "
                          f"processes here; drop --nproc under torchrun")
    world = int(os.environ["WORLD_SIZE"]) if local is not None else (nproc or 1)
    if batch_size % world:
        lower, upper = batch_size // world * world, (batch_size // world + 1) * world
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must split evenly over {world} "
                          f"processes (use a multiple of {world}, e.g. {lower or upper} or {upper})")
    return world


# ---- the process group -----------------------------------------------------------------------------

def resolve_device(name: "str | torch.device", local_world: int | None = None) -> "torch.device":
    """``auto`` (CUDA when torch sees a device, else the CPU), ``cpu`` or ``cuda``; under torchrun,
    rank ``LOCAL_RANK`` takes CUDA device ``LOCAL_RANK``. ConfigError when this machine cannot run
    ``local_world`` processes there (default: torchrun's, else 1)."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda; got {name!r}")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise ConfigError("--device cuda, but torch sees no CUDA device here (torch.cuda.is_available() is "
                          "False); use --device cpu or auto")
    if name == "cpu" or not available:
        return torch.device("cpu")
    local_rank = int(os.environ["LOCAL_RANK"]) if in_worker() else 0
    if local_world is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if in_worker() else 1
    if local_world > torch.cuda.device_count():
        raise ConfigError(f"{local_world} processes on this machine need one CUDA device each, torch sees "
                          f"{torch.cuda.device_count()}; start fewer (--nproc) or use --device cpu")
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device: str) -> Iterator["torch.device"]:
    """Yields this process's device. Under torchrun it first joins the process group (nccl on CUDA,
    gloo on the CPU) and leaves it after a clean exit or a Ctrl-C (every rank gets one); on an error
    the process exits and torchrun tears the group down. (The worker then ends through
    :func:`leave`.)"""
    dev = resolve_device(device)
    if not in_worker():
        yield dev
        return
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; train on one process")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    _first_ctrl_c_stops()
    try:
        yield dev
    except KeyboardInterrupt:
        dist.destroy_process_group()
        raise
    dist.destroy_process_group()


_interrupted = False


def _first_ctrl_c_stops() -> None:
    """torchrun forwards Ctrl-C to every rank, which also gets the terminal's: the first one stops
    this rank (KeyboardInterrupt) and the next ones are ignored, so it stops once, without a
    traceback from the second."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return

    def stop(signum, frame):
        global _interrupted
        _interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)


def _group():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _group()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist else 0


def is_main() -> bool:
    return rank() == 0


# ---- training ----------------------------------------------------------------------------------------

def wrap(model: "nn.Module") -> "nn.Module":
    """``model`` in DistributedDataParallel when a process group is up (it broadcasts rank 0's weights
    and averages gradients in backward), else ``model`` itself."""
    if _group() is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def shard(*batch: "Tensor") -> tuple[tuple, float]:
    """This rank's contiguous rows of a global batch (x, y[, mask]) and their share of it (rows /
    global rows; with a mask, known targets / global known targets, since the loss is their mean); a
    rank with no row of a short last batch gets the batch's first row with share 0."""
    n, r, m = world_size(), rank(), len(batch[0])
    if n == 1:
        return batch, 1.0
    lo, hi = r * m // n, (r + 1) * m // n
    if lo == hi:
        return tuple(t[:1] for t in batch), 0.0
    if len(batch) > 2:
        share = float(batch[2][lo:hi].sum() / batch[2].sum().clamp_min(1))
    else:
        share = (hi - lo) / m
    return tuple(t[lo:hi] for t in batch), share


def for_backward(loss: "Tensor", share: float) -> "Tensor":
    """The local loss to differentiate so that DDP's average over the N ranks is the gradient of the
    global batch's mean loss: loss * N * share (the loss itself on one process)."""
    n = world_size()
    return loss if n == 1 else loss * (n * share)


def all_sum(values: "Tensor") -> "Tensor":
    """``values`` summed over the ranks (in place; ``values`` itself on one process)."""
    dist = _group()
    if dist is not None:
        dist.all_reduce(values)
    return values


def from_main(compute: Callable[[], float], device: "torch.device") -> float:
    """``compute()`` on rank 0, broadcast to every rank, so every rank decides on the same number."""
    dist = _group()
    if dist is None:
        return compute()
    import torch

    value = torch.tensor([compute() if dist.get_rank() == 0 else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(value, src=0)
    return value.item()


def reseed(seed: int, epoch: int) -> None:
    """Under DDP, seed torch's generator (dropout) by (seed, epoch, rank): see the module docstring."""
    if world_size() > 1:
        import numpy as np
        import torch

        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1)[0]))


# ---- failures ----------------------------------------------------------------------------------------

def peer_left(e: BaseException) -> bool:
    """An error of this rank's collective because another rank died (gloo: the connection dropped;
    nccl: the communicator was aborted), or any failure after Ctrl-C."""
    import torch.distributed as dist

    text = str(e)
    return _interrupted or isinstance(e, getattr(dist, "DistError", ())) or \
        "Connection reset by peer" in text or "Connection closed by peer" in text


def record(message: str, details: str | None = None) -> None:
    """Write this rank's failure into torchrun's error file (TORCHELASTIC_ERROR_FILE, in the format of
    torch's own ErrorHandler; ``details``, e.g. a traceback, is what torchrun's report shows), read by
    the agent and by :func:`launch`. A no-op outside torchrun."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or not in_worker():
        return
    now = time.time()
    data = {"message": {"message": message, "extraInfo": {"py_callstack": details or message,
                                                          "timestamp": str(int(now))}},
            "rnnkit_time": now}  # torch's timestamp has whole seconds
    try:
        Path(path).write_text(json.dumps(data))
    except OSError:
        pass  # the agent then reports the exit code alone


def crashed(e: BaseException) -> int:
    """Report an unexpected exception of a torchrun worker: its traceback on stderr and its message in
    the error file, or nothing when it only follows another rank's failure. Returns the exit code."""
    if peer_left(e):
        return 130 if _interrupted else 1
    import traceback

    traceback.print_exc()
    record(f"{type(e).__name__}: {e}", traceback.format_exc())
    return 1


# ---- the launcher ------------------------------------------------------------------------------------

def launch(nproc: int, argv: list[str], run_dir: Path, threads: int) -> int:
    """``torchrun --standalone --nproc-per-node nproc -m rnnkit ARGV`` in this process (torch's own
    launcher, torch.distributed.run), whose workers see ``--nproc`` under torchrun and train. Returns
    the exit code: 0, or the first failed rank's (128 + signal for a killed one), after one line
    that names it unless rank 0 has already said what went wrong."""
    import logging

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent logs each stopped worker; the one line below says what matters.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "rnnkit", *argv]))
    except SignalException as e:  # Ctrl-C (or a kill) of this launcher: the workers got it too
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = first_failure(e.failures)
        zero = e.failures.get(0)
        if zero is not None and zero.exitcode in (2, 130) and _has_record(zero):
            return zero.exitcode  # rank 0 has printed the error, as one process does
        if failure.exitcode < 0:
            what = f"was killed by {failure.signal_name()}"
        else:
            message = failure.message["message"] if _has_record(failure) else ""
            what = f"failed: {message}" if message else f"exited with code {failure.exitcode}"
        print(f"error: rank {rank} of {nproc} {what}; the other ranks were stopped{_resume_hint(run_dir, nproc)}",
              file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    return 0


def _has_record(failure) -> bool:
    return isinstance(failure.error_file_data, dict) and "rnnkit_time" in failure.error_file_data


def first_failure(failures: dict) -> tuple[int, object]:
    """The rank that failed first and its ProcessFailure. Its own record wins over a signal, which
    wins over a bare exit code (a rank whose peer left exits 1 and records nothing); SIGTERM is
    torchrun stopping the others; then the earliest."""
    def order(item):
        rank, f = item
        if _has_record(f):
            return (0, f.error_file_data["rnnkit_time"], rank)
        if f.exitcode < 0 and -f.exitcode != signal.SIGTERM:
            return (1, f.timestamp, rank)
        return (2, f.timestamp, rank)

    return min(failures.items(), key=order)


def _resume_hint(run_dir: Path, nproc: int) -> str:
    from .errors import RnnkitError
    from .runs import WEIGHTS, load_checkpoint

    try:
        ckpt = None if (run_dir / WEIGHTS).exists() else load_checkpoint(run_dir)
    except RnnkitError:
        return ""
    if ckpt is None:
        return ""
    return (f" ({run_dir} keeps the checkpoint of epoch {ckpt[1]['loop']['epoch']}: continue with "
            f"`rnnkit train --resume {run_dir} --nproc {nproc}`)")
