"""rnnkit: Elman RNN, LSTM and GRU from their equations, drop-in for torch.nn, and a forecasting tool."""

__version__ = "0.1.0"

# The public names load their module (and torch) on first use, so `rnnkit --help` and a mistyped flag
# answer at once instead of after importing torch.
_WHERE = {"RNN": "layers", "LSTM": "layers", "GRU": "layers", "Recurrent": "layers", "RNNCell": "cells",
          "LSTMCell": "cells", "GRUCell": "cells", "CustomRNN": "models", "Forecaster": "forecaster", "RnnkitError": "errors"}

__all__ = [*_WHERE, "__version__"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
