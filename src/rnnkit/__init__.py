"""rnnkit: Elman RNN, LSTM and GRU from their equations, drop-in for torch.nn, and a forecasting tool."""

__version__ = "0.1.0"

from .cells import GRUCell, LSTMCell, RNNCell
from .errors import RnnkitError
from .layers import GRU, LSTM, RNN
from .models import CustomRNN
from .forecaster import Forecaster

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "CustomRNN", "Forecaster", "RnnkitError",
           "__version__"]
