"""The training loop: Adam, a learning-rate schedule, gradient clipping, early stopping, seeds.

Every ``log_every`` epochs it prints the seed's line ``Epoch 10/100, Loss: 0.095100, Time: 0.04s``
where Loss is the mean of that epoch's batch losses and Time that epoch's seconds (plus
``, Val Loss: ...`` when there is a validation part). A tqdm bar shows progress on a terminal.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .config import TrainConfig
from .errors import TrainingError


def next_step_targets(x: Tensor, y: Tensor, target_cols: tuple[int, ...] | None = None) -> Tensor:
    """Targets for every step's forecast: step t of a window predicts the H values after input t (the
    later inputs, then y), horizon-major as the model's output. The target columns default to the
    first T input features. x (B, S, F), y (B, H, T) -> (B, S, H*T)."""
    cols = list(range(y.shape[2]) if target_cols is None else target_cols)
    seq = torch.cat([x[:, 1:, cols], y], dim=1)  # (B, S-1+H, T)
    B, S, H = x.shape[0], x.shape[1], y.shape[1]
    return seq.unfold(1, H, 1).transpose(2, 3).reshape(B, S, -1)  # (B, S, H*T)


def batch_loss(model: nn.Module, x: Tensor, y: Tensor, loss_steps: str) -> Tensor:
    """MSE of the last step's forecast (the seed's loss), or of every step's forecast."""
    if loss_steps == "all":
        return nn.functional.mse_loss(model(x, every_step=True), next_step_targets(x, y))
    return nn.functional.mse_loss(model(x).view_as(y), y)


@torch.no_grad()
def mean_loss(model: nn.Module, loader: DataLoader) -> float:
    """Last-step MSE over every window of a loader (scaled units)."""
    model.eval()
    total, n = 0.0, 0
    for x, y in loader:
        total += nn.functional.mse_loss(model(x).view_as(y), y, reduction="sum").item()
        n += y.numel()
    return total / max(n, 1)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None, cfg: TrainConfig,
        log: Callable[[str], None] | None = print, progress: bool | None = None) -> dict:
    """Train ``model`` in place and return its history.

    Early stopping (cfg.patience > 0 and a validation loader) restores the weights of the best
    validation epoch. The plateau schedule watches the validation loss (the training loss without
    one). ``progress``: tqdm bar on stderr; None shows it only on a terminal.

    History: epoch, train_loss (mean batch loss), val_loss (or None), lr, time (per epoch, s),
    best_epoch, stopped_early.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg)
    hist: dict = {"epoch": [], "train_loss": [], "val_loss": [], "lr": [], "time": [],
                  "best_epoch": None, "stopped_early": False}
    best, best_state, bad = math.inf, None, 0
    bar = tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch", leave=False,
               disable=(not progress) if progress is not None else None)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        losses = []
        for x, y in train_loader:
            loss = batch_loss(model, x, y, cfg.loss_steps)
            if not torch.isfinite(loss):
                raise TrainingError(f"the training loss became {loss.item()} at epoch {epoch}; "
                                    f"lower --lr (now {cfg.lr}) or keep gradient clipping on")
            opt.zero_grad()
            loss.backward()
            if cfg.clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            opt.step()
            losses.append(loss.item())
        train_loss = sum(losses) / len(losses)
        val_loss = mean_loss(model, val_loader) if val_loader is not None else None
        lr = opt.param_groups[0]["lr"]
        watched = val_loss if val_loss is not None else train_loss
        if sched is not None:
            sched.step(watched) if cfg.schedule == "plateau" else sched.step()
        seconds = time.perf_counter() - t0
        for k, v in zip(("epoch", "train_loss", "val_loss", "lr", "time"),
                        (epoch, train_loss, val_loss, lr, seconds)):
            hist[k].append(v)
        bar.set_postfix(loss=f"{train_loss:.5f}", **({"val": f"{val_loss:.5f}"} if val_loss is not None else {}))
        if log is not None and epoch % cfg.log_every == 0:
            line = f"Epoch {epoch}/{cfg.epochs}, Loss: {train_loss:.6f}, Time: {seconds:.2f}s"
            if val_loss is not None:
                line += f", Val Loss: {val_loss:.6f}"
            with tqdm.external_write_mode():  # print above the bar, not through it
                log(line)
        if val_loss is not None:
            if val_loss < best:
                best, bad, hist["best_epoch"] = val_loss, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if cfg.patience and bad >= cfg.patience:
                    hist["stopped_early"] = True
                    break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        hist["best_epoch"] = hist["epoch"][-1]
    if log is not None and hist["stopped_early"]:
        log(f"Stopped early at epoch {hist['epoch'][-1]}; kept epoch {hist['best_epoch']} "
            f"(best validation loss {best:.6f})")
    model.eval()
    return hist


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    return None
