"""Tables as series: a CSV file, a pandas DataFrame / Series or a numpy array -> one series, or a panel
of many in the long format (an id column, a time column, the values), checked cell by cell so that a
user mistake is a :class:`~rnnkit.errors.DataError` naming the column and the rows (file lines for a
CSV, counting the header as line 1).

    read_csv(path, target="passengers", time_col="month")          # -> Panel of one series
    frame_panel(df, target="y", time_col="ds", id_col="unique_id")  # -> Panel of every id's series
    frame_series(df, target="y", features="x1,x2", fill="interpolate")  # -> TableSeries

The time column (:mod:`rnnkit.timeaxis`) puts each series on a regular grid; a time the grid has but
the table lacks is an error naming it, or a row filled like a missing value (``fill``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from . import timeaxis
from .errors import DataError
from .timeaxis import TimeAxis

FILL_HINT = "fill them in, or pass --fill interpolate or --fill ffill"


class TableSeries(NamedTuple):
    """One series: values (N, F) float64, targets first, then features (the last n_future of them
    known ahead: future features, then calendar features); its time grid or None."""

    values: np.ndarray
    columns: tuple[str, ...]       # F names, in the values' column order
    n_targets: int                 # the first n_targets columns are the targets
    time: TimeAxis | None = None   # the time column's grid, N points
    n_future: int = 0              # the last n_future columns' values are known ahead

    @property
    def season(self) -> int:
        """The seasonal period the time column implies (see TimeAxis.season); 1 without one."""
        return self.time.season if self.time is not None else 1


class Panel(NamedTuple):
    """Series that share their columns: one without an id column (``ids`` None), or one per id."""

    series: tuple[TableSeries, ...]
    ids: tuple | None = None       # each series' id, as the table has it

    @property
    def columns(self) -> tuple[str, ...]:
        return self.series[0].columns

    @property
    def n_targets(self) -> int:
        return self.series[0].n_targets

    @property
    def n_future(self) -> int:
        return self.series[0].n_future

    @property
    def season(self) -> int:
        return self.series[0].season

    @property
    def time(self) -> TimeAxis | None:
        """The first series' time grid (the step and form every series shares)."""
        return self.series[0].time

    def label(self, i: int) -> str:
        """How messages name series i."""
        return "the series" if self.ids is None else f"id {self.ids[i]!r}"

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.series)


def names(text: str | list | tuple | None) -> list[str]:
    """Column names from "a,b" or a list; blanks dropped."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    return [t.strip() for t in items if t.strip()]


def read_csv(path: str | Path, target: str, features: str = "", time_col: str = "", fill: str = "none",
             id_col: str = "", date_format: str = "", sep: str = ",", future_features: str = "",
             calendar: bool = False) -> Panel:
    """The series in a CSV file with a header row; see :func:`frame_panel`. The time and id columns
    are read as text, so that they are kept exactly as written."""
    df = read_table(path, sep, (time_col, id_col))
    return frame_panel(df, target, features, time_col, fill, where=str(path), first_line=2, id_col=id_col,
                       date_format=date_format, future_features=future_features, calendar=calendar)


def read_table(path: str | Path, sep: str = ",", text_cols=()):
    """A CSV file with a header row as a DataFrame, the columns ``text_cols`` read as text; a
    DataError that says what is wrong with the file."""
    import pandas as pd

    path = Path(path)
    sep = "\t" if sep == "\\t" else sep  # as typed on a command line
    try:
        df = pd.read_csv(path, skipinitialspace=True, dtype={c: str for c in text_cols if c}, sep=sep)
    except FileNotFoundError:
        raise DataError(f"CSV file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a CSV file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file {path} is empty; it needs a header row and one row per time step") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise DataError(f"cannot read {path} as CSV ({first})") from None
    if len(df.columns) == 1 and sep == "," and any(c in str(df.columns[0]) for c in ";\t|"):
        raise DataError(f"{path} has one column {df.columns[0]!r}: it looks separated by something other "
                        f"than commas; pass --sep ';' (or the separator it uses)")
    return df


def future_values(history: Panel, future: Any, horizon: int, columns: list[str], time_col: str = "",
                  id_col: str = "", date_format: str = "", sep: str = ",") -> np.ndarray:
    """The values of ``columns`` (features known ahead) at the ``horizon`` steps after each series of
    ``history``, (series, horizon, columns), from ``future``: a CSV path or a DataFrame with those
    columns (and the time and id columns the history has). With a time column each step is found by
    its time (the table may also hold earlier rows: they are not read), else a series' first
    ``horizon`` rows are its steps. A DataError names what is missing: a column, an id, a time."""
    where = str(future) if isinstance(future, (str, Path)) else "the future values"
    df = read_table(future, sep, (time_col, id_col)) if isinstance(future, (str, Path)) else as_frame(future)[0]
    missing = [c for c in columns + [c for c in (time_col, id_col) if c] if c not in df.columns]
    if missing:
        raise DataError(f"{where} has no column {', '.join(map(repr, missing))}; it needs the columns known ahead "
                        f"({', '.join(columns)}){' and ' + time_col if time_col else ''}"
                        f"{' and ' + id_col if id_col else ''} for the {horizon} steps after the history")
    groups = ({str(k): g for k, g in df.groupby(df[id_col].astype(str), sort=False)} if id_col else {"": df})
    out = np.empty((len(history), horizon, len(columns)))
    for i, s in enumerate(history.series):
        key = str(history.ids[i]) if history.ids is not None else ""
        rows = groups.get(key)
        who = f" for {id_col} {key}" if id_col else ""
        if rows is None:
            raise DataError(f"{where} has no rows{who}; it needs the {horizon} steps after the history")
        if s.time is None:
            values = rows[columns].to_numpy(dtype=np.float64)[:horizon]
        else:
            wanted = [str(t) for t in s.time.future(horizon)]
            by_time = dict(zip(rows[time_col].astype(str).str.strip(), range(len(rows))))
            lacking = [t for t in wanted if t not in by_time]
            if lacking:
                raise DataError(f"{where} has no row{who} at {time_col} {lacking[0]}"
                                f"{f' (nor at {len(lacking) - 1} later steps)' if len(lacking) > 1 else ''}; "
                                f"the forecast reads {', '.join(columns)} at the {horizon} steps "
                                f"{wanted[0]} .. {wanted[-1]}, written as the history writes its times")
            values = rows[columns].to_numpy(dtype=np.float64)[[by_time[t] for t in wanted]]
        if len(values) < horizon:
            raise DataError(f"{where} has {len(values)} rows{who}; the forecast needs {horizon}")
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            step = bad[0][0] + 1
            raise DataError(f"{where}{who}: {columns[bad[0][1]]} is missing or not a number at forecast step {step}")
        out[i] = values
    return out


def frame_series(df: Any, target: str | list = "", features: str | list = "", time_col: str = "",
                 fill: str = "none", where: str = "the data", first_line: int | None = None,
                 date_format: str = "") -> TableSeries:
    """A table without an id column as one series (see :func:`frame_panel`)."""
    return frame_panel(df, target, features, time_col, fill, where, first_line, date_format=date_format).series[0]


def as_frame(data: Any, target: str | list = "", features: str | list = "", time_col: str = ""):
    """(DataFrame, target, features, time_col) of a DataFrame, a pandas Series or an array (N,) /
    (N, F) (columns "0", "1", ...; target "0" and features the rest unless named). A DatetimeIndex or
    PeriodIndex becomes the time column (named as the index, else "time") unless one is named; a
    Series' name is its target."""
    import pandas as pd

    if isinstance(data, pd.Series):
        name = str(data.name) if data.name is not None else "0"
        data = data.to_frame(name)
        target = target or name
    if not isinstance(data, pd.DataFrame):
        a = np.asarray(data)
        if a.ndim not in (1, 2) or a.size == 0:
            raise DataError(f"a series array must be (N,) or (N, features) and not empty, got shape {a.shape}")
        a = a.reshape(len(a), -1)
        data = pd.DataFrame(a, columns=[str(i) for i in range(a.shape[1])])
        if not names(target):
            target, features = "0", features or ",".join(data.columns[1:])
    if not time_col and isinstance(data.index, (pd.DatetimeIndex, pd.PeriodIndex)):
        time_col = str(data.index.name or "time")
        data = data.rename_axis(time_col).reset_index()
    return data.rename(columns=str).reset_index(drop=True), target, features, time_col


def frame_panel(df: Any, target: str | list = "", features: str | list = "", time_col: str = "",
                fill: str = "none", where: str = "the data", first_line: int | None = None, id_col: str = "",
                date_format: str = "", future_features: str | list = "", calendar: bool = False) -> Panel:
    """A table as a panel: one series, or with ``id_col`` one per id (in the order the ids first
    appear; an id's rows need not be contiguous, but its times must increase).

    target: the target column(s), also inputs; features: extra input columns; future_features:
    input columns whose values are known ahead (they come last); calendar: also the time column's
    calendar features (TimeAxis.calendar, known ahead, after them); time_col: a column of times
    (see :mod:`rnnkit.timeaxis`; ``date_format`` a strftime format for ambiguous dates).
    fill: "none" (missing values and missing times are errors naming them), "interpolate" (linear,
    the ends take the nearest value) or "ffill" (the previous value), within each series.
    ``first_line``: the file line of the first row, for messages (None: rows are counted from 0).
    """
    import pandas as pd

    df, target, features, time_col = as_frame(df, target, features, time_col)
    targets = names(target)
    if not targets:
        raise DataError(f"name the target column(s) of {where} (--target COL[,COL]); "
                        f"its columns are: {', '.join(df.columns)}")
    future = names(future_features)
    for c in future:
        if c in targets:
            raise DataError(f"column {c!r} is a target: its future is what is forecast, not an input known ahead; "
                            f"drop it from --future-features")
    feats = [c for c in names(features) if c not in targets and c not in future]
    cols = targets + feats + future
    wanted = cols + [c for c in (time_col, id_col) if c]
    missing = [c for c in dict.fromkeys(wanted) if c not in df.columns]
    if missing:
        raise DataError(f"{where} has no column {', '.join(map(repr, missing))}; "
                        f"its columns are: {', '.join(df.columns)}")
    for role, c in (("time", time_col), ("id", id_col)):
        if c and c in cols:
            raise DataError(f"column {c!r} cannot be both the {role} column and a target/feature")
    if time_col and time_col == id_col:
        raise DataError(f"column {time_col!r} cannot be both the time column and the id column")
    if calendar and not time_col:
        raise DataError("--calendar makes features from the time column; name it with --time-col")
    at = lambda rows: _rows(rows, first_line)  # noqa: E731
    if len(df) == 0:
        raise DataError(f"{where} has a header but no rows")
    values = _numbers(df, cols, where, at)
    if fill == "none":
        gaps = np.isnan(values)
        if gaps.any():
            which = [c for c, g in zip(cols, gaps.any(axis=0)) if g]
            raise DataError(f"{where} has missing values in {', '.join(map(repr, which))} at "
                            f"{at(np.flatnonzero(gaps.any(axis=1)))}; {FILL_HINT}")

    groups, ids = _groups(df, id_col, where, at)
    times = timeaxis.read_times(df[time_col], date_format, time_col, where, at) if time_col else None
    step = ""
    if times is not None:
        for rows in groups:
            timeaxis.check_increasing(times.points[rows], time_col, where, lambda r, rows=rows: at(rows[r]))
        try:
            step = timeaxis.find_grid(times.kind, [times.points[rows] for rows in groups], times.freq)
        except DataError as e:
            raise DataError(f"time column {time_col!r} of {where}: {e}; resample the table onto a regular "
                            f"grid, or leave out --time-col") from None
    series = []
    for i, rows in enumerate(groups):
        v, ax, source = values[rows], None, rows  # source: each value row's table row (-1: a filled time)
        if times is not None:
            pos, start = timeaxis.positions(times, step, times.points[rows])
            ax = timeaxis.axis(times, step, start, int(pos[-1]) + 1)
            if len(pos) < ax.length:
                holes = np.setdiff1d(np.arange(ax.length), pos)
                if fill == "none":
                    who = "" if ids is None else f" for id {ids[i]!r}"
                    raise DataError(f"time column {time_col!r} of {where} misses {len(holes)} time"
                                    f"{'s' if len(holes) > 1 else ''} of its {ax.describe()}{who}: "
                                    f"{timeaxis.describe_missing(ax, holes)}; add the rows, or pass --fill "
                                    f"interpolate or --fill ffill to fill them")
                full = np.full((ax.length, len(cols)), np.nan)
                full[pos] = v
                v, source = full, np.full(ax.length, -1)
                source[pos] = rows
        v = _filled(v, fill, cols, where, lambda r, source=source: at(source[r][source[r] >= 0]))
        names_, n_future = tuple(cols), len(future)
        if calendar:
            extra = ax.calendar()
            clash = [c for c in extra if c in df.columns]
            if clash:
                raise DataError(f"{where} already has a column {clash[0]!r}, a name --calendar adds; rename it")
            v = np.column_stack([v, *extra.values()])
            names_, n_future = names_ + tuple(extra), n_future + len(extra)
        series.append(TableSeries(v, names_, len(targets), ax, n_future))
    return Panel(tuple(series), ids)


def _numbers(df, cols: list[str], where: str, at: Callable) -> np.ndarray:
    """(N, F) float64 of the columns; NaN where a cell is empty."""
    import pandas as pd

    out = np.empty((len(df), len(cols)))
    for j, c in enumerate(cols):
        raw = df[c]
        num = pd.to_numeric(raw, errors="coerce")
        bad = np.flatnonzero((num.isna() & raw.notna()).to_numpy())
        if len(bad):
            raise DataError(f"column {c!r} of {where} has non-numeric cells at {at(bad)} "
                            f"(first: {raw.iloc[bad[0]]!r}); fix them, or leave them empty and use --fill")
        out[:, j] = num.to_numpy(dtype=np.float64, na_value=np.nan)
        inf = np.flatnonzero(np.isinf(out[:, j]))
        if len(inf):
            raise DataError(f"column {c!r} of {where} has infinite values at {at(inf)}")
    return out


def _groups(df, id_col: str, where: str, at: Callable) -> tuple[list[np.ndarray], tuple | None]:
    """Row indices of each series (in the table's order) and the ids, in order of first appearance."""
    import pandas as pd

    if not id_col:
        return [np.arange(len(df))], None
    col = df[id_col]
    bad = np.flatnonzero(col.isna().to_numpy())
    if len(bad):
        raise DataError(f"id column {id_col!r} of {where} is empty at {at(bad)}; every row needs its id")
    codes, uniques = pd.factorize(col, sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds), tuple(uniques.tolist())


def _filled(v: np.ndarray, fill: str, cols: list[str], where: str, at: Callable) -> np.ndarray:
    """Missing values (NaN) filled by ``fill``; what is left is a DataError naming the rows."""
    import pandas as pd

    if not np.isnan(v).any():
        return v
    table = pd.DataFrame(v)
    if fill == "interpolate":
        table = table.interpolate(method="linear", limit_direction="both")
    elif fill == "ffill":
        table = table.ffill()
    out = table.to_numpy(np.float64)
    gaps = np.isnan(out)
    if gaps.any():
        rows = np.flatnonzero(gaps.any(axis=1))
        which = [c for c, g in zip(cols, gaps.any(axis=0)) if g]
        hint = ("--fill ffill cannot fill the first rows; use --fill interpolate or drop them" if fill == "ffill"
                else FILL_HINT)
        raise DataError(f"{where} has missing values in {', '.join(map(repr, which))} at {at(rows)}; {hint}")
    return out


def _rows(rows: np.ndarray, first_line: int | None, shown: int = 5) -> str:
    base, word = (first_line, "line") if first_line is not None else (0, "row")
    rows = np.asarray(rows)
    listed = ", ".join(str(int(r) + base) for r in rows[:shown])
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return f"{word}{'s' if len(rows) > 1 else ''} {listed}{more}"


def panel_frame(panel: Panel, time_col: str = "", id_col: str = "", columns: int | None = None):
    """The panel as a long DataFrame: the id column (when it has ids), the time column in the input's
    own form (when it has times), then the values (of the first ``columns`` columns; default all)."""
    import pandas as pd

    parts = []
    for i, s in enumerate(panel.series):
        df = pd.DataFrame(s.values[:, :columns], columns=list(s.columns[:columns]))
        if s.time is not None:
            df.insert(0, time_col or "time", s.time.text())
        if panel.ids is not None:
            df.insert(0, id_col or "id", [panel.ids[i]] * len(s.values))
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def write_csv(panel: Panel, path: str | Path, time_col: str = "", id_col: str = "", columns: int | None = None
              ) -> None:
    """The panel as a CSV (see :func:`panel_frame`), written atomically; values exact (17 digits)."""
    from .runs import write_bytes

    write_bytes(path, panel_frame(panel, time_col, id_col, columns).to_csv(index=False, float_format="%.17g").encode())
