"""The run directory: weights, config, checkpoint, history, metrics and plots, written atomically,
loaded without pickle.

    DIR/config.json             {"rnnkit_version", "config": RunConfig as a dict, "scalers": [one per series],
                                "final_scalers" (a refit's), "io": {...}, "series": {...}}; written first,
                                before training starts
    DIR/checkpoint.safetensors  the latest resumable training state (see :mod:`rnnkit.train`): weights,
                                optimizer, schedule and RNG states as tensors, the rest as JSON in the
                                safetensors header; replaced after every ``checkpoint_every`` epochs
    DIR/model.safetensors       the trained model's state_dict (safetensors: tensors only, nothing to unpickle):
                                the model that forecasts
    DIR/test_model.safetensors  where that model was refit on every point: the model trained without the
                                test part, which `rnnkit test`, `backtest` and the plots score
    DIR/series.csv              a table's series (the long format for a panel), times as they came
    DIR/history.json            the training history (per-epoch losses, lr, time)
    DIR/metrics.json            written by `rnnkit test`
    DIR/*.png                   written by `rnnkit visualize`

Every file is written to a temporary file in DIR, fsynced and renamed over the target, so a crash
never leaves a half-written file under a final name, and a checkpoint is one file, so it is never a
mix of two epochs. The weights and the checkpoint record the SHA-256 of config.json's content: a
config.json edited or replaced after training is refused instead of silently mismatching the weights.

A run killed before it finished has no model.safetensors yet: loading it takes the weights training
would keep if it ended at the last checkpoint (the best validation epoch so far, else the latest), or
the finished test model while its refit was under way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import RunError

WEIGHTS = "model.safetensors"
TEST_WEIGHTS = "test_model.safetensors"
CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
# A table run's refit on every point checkpoints here, so checkpoint.safetensors keeps the test model's
# training, which `train --resume DIR --epochs N` trains further.
REFIT_CHECKPOINT = "refit_checkpoint.safetensors"
HISTORY = "history.json"
METRICS = "metrics.json"
BACKTEST = "backtest.json"
PLOTS = ("predictions_vs_true.png", "loss_curve.png")
# What `train --force` removes from a run directory before starting over: the files of the old run.
RUN_FILES = (CONFIG, CHECKPOINT, REFIT_CHECKPOINT, WEIGHTS, TEST_WEIGHTS, HISTORY, METRICS, "series.csv",
             BACKTEST) + PLOTS


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e} (choose a writable directory)") from None
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RunError(f"cannot write {path}: {e.strerror or e} (check the free space and permissions)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing (is {path.parent} a run directory made by `rnnkit train --out`?)") from None
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e} (retrain with `rnnkit train --out {path.parent} --force`)") from None


def meta_digest(meta: dict) -> str:
    """SHA-256 of a run's config.json content, independent of its formatting."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


# ---- starting and checkpointing a training run ---------------------------------------------------

def holds_run(directory: Path) -> bool:
    return any((directory / name).exists() for name in (CONFIG, CHECKPOINT, WEIGHTS, TEST_WEIGHTS))


def check_new_run_dir(directory: str | Path, force: bool = False) -> None:
    """Refuse an --out that cannot become a new run without writing anything: a file, a run already
    there (unless ``force``), a path under a file or in a directory we cannot write to."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunError(f"--out {directory} is a file, not a directory (choose another --out)")
    if directory.is_dir() and holds_run(directory) and not force:
        raise RunError(f"{directory} already holds a run (continue it with `rnnkit train --resume {directory}`, "
                       f"or replace it with --force)")
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"cannot create --out {directory}: {existing} is a file (choose another --out)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to --out {directory}: {existing} is not writable (choose another --out)")


def begin_run(directory: str | Path, meta: dict, force: bool = False) -> None:
    """Make ``directory`` a fresh run: check it, remove an old run's files (``force``), write config.json."""
    directory = Path(directory)
    check_new_run_dir(directory, force)
    if force:
        for name in RUN_FILES:
            (directory / name).unlink(missing_ok=True)
    write_json(directory / CONFIG, meta)


def save_checkpoint(directory: str | Path, meta: dict, tensors: dict, state: dict, name: str = CHECKPOINT) -> None:
    """Replace DIR/``name`` (checkpoint.safetensors) with one training state (see :func:`rnnkit.train.fit`)."""
    from safetensors.torch import save

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"rnnkit": "checkpoint", "config_sha256": meta_digest(meta), "state": json.dumps(state)}
    write_bytes(Path(directory) / name, save(flat, metadata=header))


def load_checkpoint(directory: str | Path, meta: dict | None = None, name: str = CHECKPOINT
                    ) -> tuple[dict, dict] | None:
    """(tensors, state) of DIR/``name`` (checkpoint.safetensors), or None when there is none. It must
    belong to ``meta`` (default: DIR/config.json's content)."""
    directory = Path(directory)
    path = directory / name
    if not path.exists():
        return None
    meta = read_meta(directory) if meta is None else meta
    tensors, header = _load_safetensors(path)
    try:
        if header.get("rnnkit") != "checkpoint":
            raise ValueError("no rnnkit checkpoint header")
        state = json.loads(header["state"])
        loop, hist = state["loop"], state["history"]
        epoch = loop["epoch"]
        if not (isinstance(epoch, int) and epoch >= 1 and hist["epoch"] == list(range(1, epoch + 1))):
            raise ValueError(f"epoch {epoch!r} disagrees with its history")
        if any(len(hist[k]) != epoch for k in ("train_loss", "val_loss", "lr", "time")):
            raise ValueError("its history is incomplete")
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path} is damaged ({e}); delete it to train {directory} from the start, "
                       f"or retrain with --force") from None
    if header.get("config_sha256") != meta_digest(meta):
        raise RunError(f"{path} does not belong to {directory / CONFIG} (it was edited or replaced); "
                       f"restore it, or retrain with `rnnkit train --out {directory} --force`")
    return tensors, state


def remove_stale_temp_files(directory: str | Path) -> None:
    """Delete the temporary files of writes a killed process never finished (they are never read)."""
    for path in Path(directory).glob(".*.tmp"):
        if any(path.name.startswith(f".{name}.") for name in RUN_FILES):
            path.unlink(missing_ok=True)


# ---- finished runs -------------------------------------------------------------------------------

def save_run(directory: str | Path, state_dict: dict, meta: dict, history: dict | None = None) -> Path:
    """Write config.json (``meta``), the weights and history.json into ``directory``; returns it."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunError(f"--out {directory} is a file, not a directory (choose another --out)")
    write_json(directory / CONFIG, meta)
    save_weights(directory / WEIGHTS, state_dict, meta)
    if history is not None:
        write_json(directory / HISTORY, history)
    return directory


def save_weights(path: str | Path, state_dict: dict, meta: dict) -> None:
    """A state_dict as safetensors, tagged with the SHA-256 of the run's config.json content."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    write_bytes(path, save(tensors, metadata={"config_sha256": meta_digest(meta)}))


def load_weights(path: str | Path, meta: dict) -> dict:
    """The state_dict in a weights file of the run whose config.json holds ``meta``; checked."""
    path = Path(path)
    state, header = _load_safetensors(path)
    recorded = header.get("config_sha256")
    if recorded is not None and recorded != meta_digest(meta):
        raise RunError(f"the weights in {path.parent} do not match its config.json (it was edited or replaced "
                       f"after training); restore it, or retrain with `rnnkit train --out {path.parent} --force`")
    _check_finite(path.parent, state)
    return state


def read_meta(directory: str | Path) -> dict:
    """config.json of a run directory, checked to be one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RunError(f"run directory {directory} does not exist (train one with `rnnkit train --out {directory}`)")
    if not (directory / CONFIG).exists():
        what = "is empty" if not any(directory.iterdir()) else "has no config.json"
        raise RunError(f"{directory} {what}, so it is not a run directory (train one with "
                       f"`rnnkit train --out {directory}`)")
    meta = read_json(directory / CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise RunError(f"{directory / CONFIG} is not an rnnkit run config (no 'config' table); "
                       f"retrain with `rnnkit train --out {directory} --force`")
    _check_meta(directory, meta)
    return meta


def read_config(directory: str | Path):
    """The RunConfig in a run directory's config.json, checked."""
    from .config import RunConfig
    from .errors import ConfigError

    try:
        return RunConfig.from_dict(read_meta(directory)["config"]).validate()
    except ConfigError as e:
        raise RunError(f"{Path(directory) / CONFIG} is not a valid rnnkit run config ({e}); "
                       f"retrain with `rnnkit train --out {directory} --force`") from None


def load_run(directory: str | Path) -> tuple[dict, dict, dict | None, dict | None]:
    """(meta from config.json, state_dict, history or None, the test model's state_dict or None) of a
    run directory; nothing is unpickled. The test model's is None where the model that forecasts is
    also the test model (no refit).

    Without model.safetensors (training was stopped before the end) the weights are the finished test
    model's, else those the last checkpoint holds: what training would keep if it ended there."""
    directory = Path(directory)
    meta = read_meta(directory)
    history = read_json(directory / HISTORY) if (directory / HISTORY).exists() else None
    test = load_weights(directory / TEST_WEIGHTS, meta) if (directory / TEST_WEIGHTS).exists() else None
    if (directory / WEIGHTS).exists():
        return meta, load_weights(directory / WEIGHTS, meta), history, test
    if test is not None:
        return meta, test, history, None
    ckpt = load_checkpoint(directory, meta)
    if ckpt is None:
        raise RunError(f"{directory / WEIGHTS} is missing and there is no checkpoint (training stopped before "
                       f"its first epoch ended); continue with `rnnkit train --resume {directory}`")
    tensors, ck_state = ckpt
    prefix = "best." if ck_state.get("has_best") else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    history = history if history is not None else ck_state["history"]
    _check_finite(directory, state)
    return meta, state, history, None


def weights_source(directory: str | Path) -> str | None:
    """None for a finished run; else a note saying which checkpoint's weights load_run used."""
    directory = Path(directory)
    if (directory / WEIGHTS).exists():
        return None
    if (directory / TEST_WEIGHTS).exists():
        return (f"note: {directory} has no {WEIGHTS} yet (its refit on every point did not finish); using its "
                f"test model (finish it with `rnnkit train --resume {directory}`)")
    if not (directory / CHECKPOINT).exists():
        return None
    _, state = load_checkpoint(directory)
    epoch = state["loop"]["epoch"]
    return (f"note: {directory} has no {WEIGHTS} yet (training did not finish); using its checkpoint of epoch "
            f"{epoch} (finish it with `rnnkit train --resume {directory}`)")


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, header metadata) of a safetensors file; anything else is a RunError, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        tensors = load(data)  # validates the header and every tensor's extent
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e} (check the path)") from None
    except (SafetensorError, ValueError) as e:
        raise RunError(f"{path} is not a valid safetensors file ({e}); rnnkit never unpickles weights, so "
                       f"retrain the run") from None
    return tensors, header


def _check_meta(directory: Path, meta: dict) -> None:
    """The parts of config.json the config classes do not check: sizes and the scaler."""
    where = f"{directory / CONFIG}"
    try:
        io = meta["io"]
        for key in ("input_size", "output_size", "n_targets"):
            if not (isinstance(io[key], int) and not isinstance(io[key], bool) and io[key] >= 1):
                raise ValueError(f"io.{key} must be a positive integer, got {io[key]!r}")
        for key in ("scalers", "final_scalers"):
            if key not in meta and key == "final_scalers":
                continue
            if not isinstance(meta[key], list) or not meta[key]:
                raise ValueError(f"{key} must be a list of one scaler per series")
            for scaler in meta[key]:
                _check_scaler(scaler)
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{where} is not a valid rnnkit run config ({e}); retrain with "
                       f"`rnnkit train --out {directory} --force`") from None


def _check_scaler(scaler: dict) -> None:
    mean, std, seasonal, drift = scaler["mean"], scaler["std"], scaler.get("seasonal", []), scaler.get("drift", [])
    if scaler["kind"] not in ("none", "standard", "log"):
        raise ValueError(f"scaler kind {scaler['kind']!r} is not none, standard or log")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) >= 1):
        raise ValueError("scaler.mean and scaler.std must be lists of the same length")
    if not (isinstance(seasonal, list) and all(isinstance(r, list) and len(r) == len(mean) for r in seasonal)):
        raise ValueError("scaler.seasonal must be a list of rows, one value per feature")
    if not (isinstance(drift, list) and len(drift) in (0, len(mean))):
        raise ValueError("scaler.drift must be a list of one value per feature")
    for v in mean + std + drift + [x for r in seasonal for x in r]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"the scaler holds {v!r}, not a finite number")
    if any(v <= 0 for v in std):
        raise ValueError("scaler.std must be positive")


def _check_finite(directory: Path, state: dict) -> None:
    import torch

    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RunError(f"the weights in {directory} hold NaN or inf ({name}); retrain the run")


# ---- the seed's .pth -----------------------------------------------------------------------------

SEED_KEYS = ("W_ih", "W_hh", "W_ho", "bias_h", "bias_o")


def load_seed_checkpoint(path: str | Path):
    """The seed's ``rnn_custom_model.pth`` (a CustomRNN state_dict) as an :class:`rnnkit.CustomRNN`.

    Loaded with ``torch.load(weights_only=True)``: tensors and plain containers only. A file holding
    any other object (which a full unpickle could run as code) is refused with a RunError."""
    import pickle

    import torch

    from .models import CustomRNN

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist or is not a file (give the seed's rnn_custom_model.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise RunError(f"{path} is not a PyTorch checkpoint ({str(e)[:200]}); give the seed's "
                           f"rnn_custom_model.pth") from None
        raise RunError(f"refused to load {path}: it is not a plain state_dict of tensors, and unpickling "
                       f"anything else could run code (save one: torch.save(model.state_dict(), PATH))") from None
    except Exception as e:  # torch's readers fail on random bytes in many ways (IndexError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{path} is not a PyTorch checkpoint ({first[:200]}); give the seed's "
                       f"rnn_custom_model.pth") from None
    if not isinstance(state, dict) or set(state) != set(SEED_KEYS) or \
            not all(isinstance(state[k], torch.Tensor) for k in SEED_KEYS):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise RunError(f"{path} is not a CustomRNN state_dict (expected tensors {', '.join(SEED_KEYS)}, got "
                       f"{keys}); give the seed's rnn_custom_model.pth")
    W_ih, W_ho = state["W_ih"], state["W_ho"]
    if W_ih.dim() != 2 or W_ho.dim() != 2:
        raise RunError(f"{path}: W_ih and W_ho must be matrices, got shapes {tuple(W_ih.shape)} and "
                       f"{tuple(W_ho.shape)}")
    model = CustomRNN(W_ih.shape[0], W_ih.shape[1], W_ho.shape[1])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise RunError(f"{path} is not a consistent CustomRNN state_dict ({first})") from None
    _check_finite(path, model.state_dict())
    return model.eval()
