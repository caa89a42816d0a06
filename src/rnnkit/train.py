"""The training loop: Adam, a learning-rate schedule, gradient clipping, early stopping, seeds,
checkpoints and resume; on one process or, under torchrun, on several with DistributedDataParallel
(:mod:`rnnkit.distributed`: each rank trains on its slice of every global batch, and only rank 0 logs
and saves checkpoints).

Every ``log_every`` epochs it prints the seed's line ``Epoch 10/100, Loss: 0.095100, Time: 0.04s``
where Loss is the mean of that epoch's batch losses and Time that epoch's seconds (plus
``, Val Loss: ...`` when there is a validation part). A tqdm bar shows progress on a terminal.

A *checkpoint* is everything the loop needs to go on as if it had never stopped: the weights, the
optimizer's and the schedule's state, every random generator (torch's, the training loader's shuffling
generator, Python's and numpy's), the epoch, the history and the early-stopping state. It is a pair
(tensors, state): ``tensors`` a flat dict of tensors, ``state`` JSON-able. Resuming from the checkpoint
of epoch e gives bitwise the same final weights as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import copy
import math
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import distributed
from .config import TrainConfig
from .errors import Interrupted, RunError, TrainingError

Checkpoint = tuple[dict[str, Tensor], dict]

# A pre-clipping gradient norm above this means training is diverging, whatever the clipping.
EXPLODING_GRAD_NORM = 1e6


def next_step_targets(x: Tensor, y: Tensor, target_cols: tuple[int, ...] | None = None) -> Tensor:
    """Targets for every step's forecast: step t of a window predicts the H values after input t (the
    later inputs, then y), horizon-major as the model's output. The target columns default to the
    first T input features. x (B, S, F), y (B, H, T) -> (B, S, H*T)."""
    cols = list(range(y.shape[2]) if target_cols is None else target_cols)
    seq = torch.cat([x[:, 1:, cols], y], dim=1)  # (B, S-1+H, T)
    B, S, H = x.shape[0], x.shape[1], y.shape[1]
    return seq.unfold(1, H, 1).transpose(2, 3).reshape(B, S, -1)  # (B, S, H*T)


def batch_loss(model: nn.Module, x: Tensor, y: Tensor, loss_steps: str, kind: str = "mse",
               mask: Tensor | None = None) -> Tensor:
    """The loss ("mse" or "mae") of the last step's forecast (the seed's loss), or of every step's
    forecast; the mean over the known targets (``mask`` (B, H, T): 1 where known) and, for an
    ensemble in training mode (outputs (members, B, ...)), over its members."""
    if loss_steps == "all":
        pred, target = model(x, every_step=True), next_step_targets(x, y)
    else:
        pred, target = model(x), y
        pred = pred.view(*pred.shape[:-1], *y.shape[1:])  # ([members,] B, H, T)
    if mask is None and pred.shape == target.shape:  # (the seed's exact loss for mse)
        loss = nn.functional.mse_loss if kind == "mse" else nn.functional.l1_loss
        return loss(pred, target)
    err = pred - target
    err = err.square() if kind == "mse" else err.abs()
    if mask is None:
        return err.mean()
    return (err * mask).sum() / (mask.sum() * (err.numel() // mask.numel())).clamp_min(1)


def auto_epochs(windows: int, batch_size: int, steps: int = 300) -> int:
    """Epochs of about ``steps`` optimizer steps over ``windows`` training windows (at least one)."""
    per_epoch = max(1, math.ceil(windows / batch_size))
    return max(1, round(steps / per_epoch))


@torch.no_grad()
def mean_loss(model: nn.Module, loader: DataLoader, kind: str = "mse") -> float:
    """Last-step loss ("mse" or "mae") over every known target of a loader's windows (scaled units),
    on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0.0
    for x, y, *mask in loader:
        x, y = x.to(device), y.to(device)
        err = model(x).view_as(y) - y
        err = err.square() if kind == "mse" else err.abs()
        if mask:
            m = mask[0].to(device)
            total += float((err * m).sum())
            n += float(m.sum())
        else:
            total += err.sum().item()
            n += y.numel()
    return total / max(n, 1)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None, cfg: TrainConfig,
        log: Callable[[str], None] | None = print, progress: bool | None = None,
        checkpoint: Callable[[dict[str, Tensor], dict], None] | None = None,
        resume: Checkpoint | None = None) -> dict:
    """Train ``model`` in place and return its history.

    Early stopping (cfg.patience > 0 and a validation loader) restores the weights of the best
    validation epoch. The plateau schedule watches the validation loss (the training loss without
    one). ``progress``: tqdm bar on stderr; None shows it only on a terminal.

    ``checkpoint(tensors, state)`` is called every ``cfg.checkpoint_every`` epochs, after the last
    epoch, and after the epoch in which Ctrl-C was pressed (in the main thread): that epoch is finished
    and saved, then :class:`~rnnkit.errors.Interrupted` is raised; a second Ctrl-C stops at once.
    ``resume``: a checkpoint to continue from (the model and loaders must be built as for the first run).

    The model trains on the device its parameters are on. Under torchrun (a process group is up) it
    trains in DistributedDataParallel and only rank 0 logs, shows progress and saves checkpoints;
    Ctrl-C then stops at once (see :mod:`rnnkit.distributed`).

    A NaN/inf loss or an exploding gradient norm raises TrainingError; the checkpoints already
    written are those of healthy epochs.

    History: epoch, train_loss (mean batch loss), val_loss (or None), lr, time (per epoch, s),
    best_epoch, stopped_early; device ("cpu" or "cuda") and processes of the last (re)start.
    """
    from tqdm.auto import tqdm

    if not distributed.is_main():
        log, progress, checkpoint = None, False, None
    device = next(model.parameters()).device

    # torch's single-kernel Adam: one call for all parameters instead of a Python loop over them
    # (0.16 -> 0.05 ms a step for a small model, benchmarks/README.md); the same update.
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    sched = _scheduler(opt, cfg)
    shuffle = getattr(train_loader, "generator", None)
    if resume is None:
        torch.manual_seed(cfg.seed)
        hist: dict = {"epoch": [], "train_loss": [], "val_loss": [], "lr": [], "time": [],
                      "best_epoch": None, "stopped_early": False}
        loop = {"epoch": 0, "best": math.inf, "bad": 0}
        best_state = None
    else:
        hist, loop, best_state = _restore(resume, model, opt, sched, shuffle)
    hist.update(device=device.type, processes=distributed.world_size())
    net = distributed.wrap(model)  # what trains: the model, or DDP around it
    # What clipping bounds: each member's gradient on its own (an ensemble's), else the model's.
    groups = [[p for p in m.parameters() if p.requires_grad] for m in getattr(model, "members", [model])]
    done = loop["epoch"] >= cfg.epochs or hist["stopped_early"]
    bar = tqdm(total=cfg.epochs, initial=loop["epoch"], desc="train", unit="epoch", leave=False,
               disable=(not progress) if progress is not None else None)
    with _ctrl_c_finishes_the_epoch(enabled=checkpoint is not None and distributed.world_size() == 1) as ctrl_c:
        for epoch in range(loop["epoch"] + 1, cfg.epochs + 1) if not done else ():
            t0 = time.perf_counter()
            distributed.reseed(cfg.seed, epoch)
            train_loss = _train_epoch(net, train_loader, opt, cfg, epoch, groups)
            val_loss = distributed.from_main(lambda: mean_loss(model, val_loader, cfg.loss), device) \
                if val_loader is not None else None
            lr = opt.param_groups[0]["lr"]
            watched = val_loss if val_loss is not None else train_loss
            if sched is not None:
                sched.step(watched) if cfg.schedule == "plateau" else sched.step()
            seconds = time.perf_counter() - t0
            for k, v in zip(("epoch", "train_loss", "val_loss", "lr", "time"),
                            (epoch, train_loss, val_loss, lr, seconds)):
                hist[k].append(v)
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.5f}", **({"val": f"{val_loss:.5f}"} if val_loss is not None else {}))
            if log is not None and epoch % cfg.log_every == 0:
                line = f"Epoch {epoch}/{cfg.epochs}, Loss: {train_loss:.6f}, Time: {seconds:.2f}s"
                if val_loss is not None:
                    line += f", Val Loss: {val_loss:.6f}"
                with tqdm.external_write_mode():  # print above the bar, not through it
                    log(line)
            if val_loss is not None:
                if val_loss < loop["best"]:
                    loop["best"], loop["bad"], hist["best_epoch"] = val_loss, 0, epoch
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    loop["bad"] += 1
                    # Running out of patience on the last epoch is not stopping early.
                    hist["stopped_early"] = bool(cfg.patience and loop["bad"] >= cfg.patience
                                                 and epoch < cfg.epochs)
            loop["epoch"] = epoch
            last = epoch == cfg.epochs or hist["stopped_early"]
            if checkpoint is not None and (epoch % cfg.checkpoint_every == 0 or last or ctrl_c.pressed):
                checkpoint(*_capture(model, opt, sched, shuffle, hist, loop, best_state))
            if ctrl_c.pressed and not last:
                bar.close()
                raise Interrupted(epoch)
            if hist["stopped_early"]:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        hist["best_epoch"] = hist["epoch"][-1]
    if log is not None and hist["stopped_early"]:
        log(f"Stopped early at epoch {hist['epoch'][-1]}; kept epoch {hist['best_epoch']} "
            f"(best validation loss {loop['best']:.6f})")
    model.eval()
    return hist


def _train_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, cfg: TrainConfig,
                 epoch: int, groups: list[list[Tensor]]) -> float:
    """One pass over the training windows; the mean batch loss. Stops on a NaN/inf loss or gradient.

    Under DDP each rank trains on its slice of every global batch, and the batch losses are the global
    ones. The checks come after backward, whose all-reduce spreads a NaN to every rank's gradient, so
    every rank stops at the same step."""
    model.train()
    device = groups[0][0].device
    losses = []
    for batch in loader:
        (x, y, *mask), share = distributed.shard(*batch)
        x, y = x.to(device), y.to(device)
        mask = mask[0].to(device) if mask else None
        loss = batch_loss(model, x, y, cfg.loss_steps, cfg.loss, mask)
        opt.zero_grad()
        distributed.for_backward(loss, share).backward()
        if not torch.isfinite(loss):
            raise TrainingError(f"the training loss became {loss.item()} at epoch {epoch} (lower --lr, now "
                                f"{cfg.lr}, or keep gradient clipping on, e.g. --clip-grad-norm 1)")
        norms = [nn.utils.clip_grad_norm_(g, cfg.clip_grad_norm) if cfg.clip_grad_norm else
                 nn.utils.get_total_norm([p.grad for p in g if p.grad is not None]) for g in groups]
        norm = norms[0] if len(norms) == 1 else torch.stack(norms).max()
        if not torch.isfinite(norm) or norm > EXPLODING_GRAD_NORM:
            raise TrainingError(f"the gradient norm exploded to {norm.item():.3g} at epoch {epoch} (lower --lr, "
                                f"now {cfg.lr}, or clip gradients, e.g. --clip-grad-norm 1)")
        opt.step()
        losses.append(loss.detach() * share)
    losses = distributed.all_sum(torch.stack(losses)).tolist()  # the global batch losses
    return sum(losses) / len(losses)


# ---- checkpoints -----------------------------------------------------------------------------------

def _capture(model: nn.Module, opt: torch.optim.Optimizer, sched, shuffle: torch.Generator | None,
             hist: dict, loop: dict, best_state: dict | None) -> Checkpoint:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    o = opt.state_dict()
    scalars: dict = {}
    for i, entry in o["state"].items():
        for k, v in entry.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{i}.{k}"] = v
            else:
                scalars.setdefault(str(i), {})[k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if shuffle is not None:
        tensors["rng.shuffle"] = shuffle.get_state()
    np_state = np.random.get_state()
    state = {
        "loop": dict(loop), "history": hist, "has_best": best_state is not None,
        "optimizer": {"param_groups": o["param_groups"], "scalars": scalars},
        "scheduler": sched.state_dict() if sched is not None else None,
        "rng": {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
    }
    return tensors, state


def _restore(ckpt: Checkpoint, model: nn.Module, opt: torch.optim.Optimizer, sched,
             shuffle: torch.Generator | None) -> tuple[dict, dict, dict | None]:
    """Put a checkpoint's state into the model, optimizer, schedule and generators; returns
    (history, loop counters, best weights or None). A checkpoint that does not fit raises RunError."""
    tensors, state = ckpt
    try:
        model.load_state_dict(_section(tensors, "model"), strict=True)
        best_state = _section(tensors, "best") if state["has_best"] else None
        if best_state is not None:
            model.load_state_dict(best_state, strict=True)  # checks it; the current weights go back next
            model.load_state_dict(_section(tensors, "model"), strict=True)
        o = state["optimizer"]
        per_param: dict = {}
        for key, v in _section(tensors, "optim").items():
            i, k = key.split(".", 1)
            per_param.setdefault(int(i), {})[k] = v
        for i, entry in o["scalars"].items():
            per_param.setdefault(int(i), {}).update(entry)
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in o["param_groups"]]
        opt.load_state_dict({"state": per_param, "param_groups": groups})
        if (sched is None) != (state["scheduler"] is None):
            raise ValueError("the checkpoint's schedule differs from the config's")
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        if shuffle is not None:
            shuffle.set_state(tensors["rng.shuffle"])
        py, npy = state["rng"]["python"], state["rng"]["numpy"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))
        loop = {k: state["loop"][k] for k in ("epoch", "best", "bad")}
        hist = state["history"]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"the checkpoint does not fit this run ({first}); retrain without --resume") from None
    return hist, loop, best_state


def extend(ckpt: Checkpoint, epochs: int, schedule: str) -> Checkpoint:
    """A checkpoint that trains on until epoch ``epochs`` (more than it has trained), as if its run had
    been given that many: early stopping's verdict and patience count cleared (the best weights so far
    stay the best), and a cosine schedule (``schedule``, the config's) re-aimed at the new last epoch,
    at the rate a run of ``epochs`` epochs has at this one; it would otherwise stay at its end value, 0."""
    tensors, state = ckpt
    state = copy.deepcopy(state)
    state["history"]["stopped_early"] = False
    state["loop"]["bad"] = 0
    if schedule == "cosine":
        sched, done = state["scheduler"], state["loop"]["epoch"]
        sched["T_max"] = epochs
        sched["_last_lr"] = [sched["eta_min"] + (base - sched["eta_min"]) * (1 + math.cos(math.pi * done / epochs)) / 2
                             for base in sched["base_lrs"]]
        for group, lr in zip(state["optimizer"]["param_groups"], sched["_last_lr"]):
            group["lr"] = lr
    return tensors, state


def _section(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


class _CtrlC:
    pressed = False


@contextmanager
def _ctrl_c_finishes_the_epoch(enabled: bool) -> Iterator[_CtrlC]:
    """While enabled (and in the main thread): the first Ctrl-C only sets ``pressed``, so the loop can
    finish its epoch and save it; a second Ctrl-C raises KeyboardInterrupt at once, as usual."""
    flag = _CtrlC()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # e.g. started with nohup: leave it ignored
        yield flag
        return

    def first_press(signum, frame):
        flag.pressed = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nCtrl-C: finishing this epoch and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, first_press)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    return None
