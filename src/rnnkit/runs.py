"""The run directory: weights, config, history, metrics and plots, written atomically, loaded without pickle.

    DIR/model.safetensors   the model's state_dict (safetensors: tensors only, nothing to unpickle)
    DIR/config.json         {"rnnkit_version", "config": RunConfig as a dict, "scaler": {...}, "io": {...}}
    DIR/history.json        the training history (per-epoch losses, lr, time)
    DIR/metrics.json        written by `rnnkit test`
    DIR/*.png               written by `rnnkit visualize`

Every file is written to a temporary file in DIR, fsynced and renamed over the target, so a crash
never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import RunError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HISTORY = "history.json"
METRICS = "metrics.json"


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
        raise RunError(f"{path} is missing; is {path.parent} a run directory made by `rnnkit train --out`?") from None
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}; retrain with `rnnkit train --out {path.parent}`") from None


def save_run(directory: str | Path, state_dict: dict, meta: dict, history: dict | None = None) -> Path:
    """Write weights, config.json (``meta``) and history.json into ``directory``; returns it."""
    from safetensors.torch import save

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunError(f"--out {directory} exists and is not a directory")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    write_bytes(directory / WEIGHTS, save(tensors))
    write_json(directory / CONFIG, meta)
    if history is not None:
        write_json(directory / HISTORY, history)
    return directory


def load_run(directory: str | Path) -> tuple[dict, dict, dict | None]:
    """(meta from config.json, state_dict, history or None) of a run directory; nothing is unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    if not directory.is_dir():
        raise RunError(f"run directory {directory} does not exist; train one with `rnnkit train --out {directory}`")
    meta = read_json(directory / CONFIG)
    if not isinstance(meta, dict) or "config" not in meta:
        raise RunError(f"{directory / CONFIG} is not an rnnkit run config (no 'config' key)")
    try:
        state = load((directory / WEIGHTS).read_bytes())
    except FileNotFoundError:
        raise RunError(f"{directory / WEIGHTS} is missing; retrain with `rnnkit train --out {directory}`") from None
    except SafetensorError as e:
        raise RunError(f"{directory / WEIGHTS} is not a valid safetensors file ({e}); retrain the run") from None
    history = read_json(directory / HISTORY) if (directory / HISTORY).exists() else None
    return meta, state, history
