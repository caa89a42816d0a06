"""Tables as series: a CSV file, a pandas DataFrame or a numpy array -> a float64 (N, F) series with the
target columns first, checked cell by cell so a user mistake is a :class:`~rnnkit.errors.DataError`
that names the column and the rows (file lines for a CSV, counting the header as line 1).

    read_csv(path, target="passengers", time_col="month")    # -> TableSeries
    frame_series(df, target="y", features="x1,x2", fill="interpolate")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import DataError


class TableSeries(NamedTuple):
    """A series and what it is made of: values (N, F) float64, targets first, then features."""

    values: np.ndarray
    columns: tuple[str, ...]       # F names, in the values' column order
    n_targets: int                 # the first n_targets columns are the targets
    time: np.ndarray | None = None  # (N,) datetime64 from the time column, or None
    freq: str | None = None         # pandas frequency inferred from the time column ("MS", "D", ...)

    @property
    def season(self) -> int:
        """The seasonal period the time column implies: 12 monthly, 4 quarterly, else 1."""
        return season_of(self.freq)


def season_of(freq: str | None) -> int:
    if not freq or freq[0].isdigit():  # unknown, or "2MS"-like multiples: no guess
        return 1
    base = freq.split("-")[0].upper()
    if base in ("M", "MS", "ME", "BM", "BMS", "BME", "SM", "SMS"):
        return 12 if not base.startswith("S") else 24
    if base.startswith("Q") or base.startswith("BQ"):
        return 4
    return 1


def names(text: str | list | tuple | None) -> list[str]:
    """Column names from "a,b" or a list; blanks dropped."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    return [t.strip() for t in items if t.strip()]


def read_csv(path: str | Path, target: str, features: str = "", time_col: str = "",
             fill: str = "none") -> TableSeries:
    """The series in a CSV file with a header row; see :func:`frame_series`."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except FileNotFoundError:
        raise DataError(f"CSV file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a CSV file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file {path} is empty; it needs a header row and one row per time step") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise DataError(f"cannot read {path} as CSV ({first})") from None
    return frame_series(df, target, features, time_col, fill, where=str(path), first_line=2)


def frame_series(df: Any, target: str | list = "", features: str | list = "", time_col: str = "",
                 fill: str = "none", where: str = "the data", first_line: int | None = None) -> TableSeries:
    """A DataFrame (or array (N,) / (N, F), whose columns are named "0", "1", ...) as a series.

    target: the target column(s), also inputs (an array's default: column "0"); features: extra input
    columns (an array's default: every other column); time_col: a column of dates in increasing order.
    fill: "none" (missing values are an error naming the rows), "interpolate" (linear, the ends take
    the nearest value) or "ffill" (the previous value). ``first_line``: the file line of the first
    row, for messages (None: rows are counted from 0).
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        a = np.asarray(df)
        if a.ndim not in (1, 2) or a.size == 0:
            raise DataError(f"a series array must be (N,) or (N, features) and not empty, got shape {a.shape}")
        a = a.reshape(len(a), -1)
        df = pd.DataFrame(a, columns=[str(i) for i in range(a.shape[1])])
        if not names(target):
            target, features = "0", features or ",".join(df.columns[1:])
    df = df.rename(columns=str).reset_index(drop=True)
    targets = names(target)
    if not targets:
        raise DataError(f"name the target column(s) of {where} (--target COL[,COL]); "
                        f"its columns are: {', '.join(df.columns)}")
    feats = [c for c in names(features) if c not in targets]
    cols = targets + feats
    wanted = cols + ([time_col] if time_col else [])
    missing = [c for c in dict.fromkeys(wanted) if c not in df.columns]
    if missing:
        raise DataError(f"{where} has no column {', '.join(map(repr, missing))}; "
                        f"its columns are: {', '.join(df.columns)}")
    if time_col in cols:
        raise DataError(f"column {time_col!r} cannot be both the time column and a target/feature")
    at = lambda rows: _rows(rows, first_line)  # noqa: E731

    time = freq = None
    if time_col:
        t = pd.to_datetime(df[time_col], errors="coerce")
        bad = np.flatnonzero(t.isna().to_numpy())
        if len(bad):
            raise DataError(f"time column {time_col!r} of {where} has values that are not dates at {at(bad)} "
                            f"(first: {df[time_col].iloc[bad[0]]!r})")
        back = np.flatnonzero((t.diff() <= pd.Timedelta(0)).to_numpy())
        if len(back):
            raise DataError(f"time column {time_col!r} of {where} does not increase at {at(back)}; "
                            f"sort the rows by time and drop repeated times")
        time = t.to_numpy()
        with pd.option_context("future.infer_freq_returns_offset", True):
            offset = pd.infer_freq(t) if len(t) >= 3 else None
        freq = offset.freqstr if offset is not None else None

    values = {}
    for c in cols:
        raw = df[c]
        num = pd.to_numeric(raw, errors="coerce")
        bad = np.flatnonzero((num.isna() & raw.notna()).to_numpy())
        if len(bad):
            raise DataError(f"column {c!r} of {where} has non-numeric cells at {at(bad)} "
                            f"(first: {raw.iloc[bad[0]]!r}); fix them, or leave them empty and use --fill")
        inf = np.flatnonzero(np.isinf(num.to_numpy(dtype=np.float64)))
        if len(inf):
            raise DataError(f"column {c!r} of {where} has infinite values at {at(inf)}")
        values[c] = num.astype(np.float64)
    table = pd.DataFrame(values)
    if fill == "interpolate":
        table = table.interpolate(method="linear", limit_direction="both")
    elif fill == "ffill":
        table = table.ffill()
    gaps = table.isna().to_numpy()
    if gaps.any():
        rows = np.flatnonzero(gaps.any(axis=1))
        which = [c for c, g in zip(cols, gaps.any(axis=0)) if g]
        hint = ("--fill ffill cannot fill the first rows; use --fill interpolate or drop them" if fill == "ffill"
                else "fill them in, or pass --fill interpolate or --fill ffill")
        raise DataError(f"{where} has missing values in {', '.join(map(repr, which))} at {at(rows)}; {hint}")
    return TableSeries(table.to_numpy(np.float64), tuple(cols), len(targets), time, freq)


def _rows(rows: np.ndarray, first_line: int | None, shown: int = 5) -> str:
    base, word = (first_line, "line") if first_line is not None else (0, "row")
    listed = ", ".join(str(int(r) + base) for r in rows[:shown])
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return f"{word}{'s' if len(rows) > 1 else ''} {listed}{more}"


def write_csv(series: TableSeries, path: str | Path, time_col: str = "") -> None:
    """The series as a CSV (time column first when there is one), written atomically."""
    import pandas as pd

    from .runs import write_bytes

    df = pd.DataFrame(series.values, columns=list(series.columns))
    if series.time is not None:
        df.insert(0, time_col or "time", pd.DatetimeIndex(series.time).strftime("%Y-%m-%d %H:%M:%S"))
    write_bytes(path, df.to_csv(index=False, float_format="%.17g").encode())
