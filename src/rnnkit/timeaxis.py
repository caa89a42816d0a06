"""Time columns: read in any common form, placed on a regular grid, and written back in that form.

A time column is one of three kinds:

* ``date``: dates and times, as text in any format pandas reads (the format is detected so that
  forecasts are written the same way: ``2019-07`` stays ``YYYY-MM``; ``--date-format`` settles
  day-first and other ambiguous forms) or a datetime column of a DataFrame;
* ``period``: quarters written ``1959Q1``, ``1959-Q1``, ``1959 Q1`` or ``Q1 1959``, or a pandas
  Period column of any frequency;
* ``number``: plain numbers, integer or fractional: years (``1821``, ``1821.0``) or steps
  (seconds ``0.5, 1.0, 1.5``). An 8-digit ``YYYYMMDD`` or 6-digit ``YYYYMM`` column is a date.

The grid is the coarsest regular step on which every time lies: yearly, quarterly, monthly (start
or end of the month), weekly, business days, or a fixed step (days, hours, minutes, ... or a
number). A row's *position* is its index on the grid; a grid point with no row is a missing time
(an error, or a filled row with ``--fill``). :class:`TimeAxis` holds one series' grid and writes
its labels; forecasts continue it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple

import numpy as np

from .errors import DataError

# The season (period) a grid implies, by its pandas offset's base code (see _season).
_SEASONS = {"Y": 1, "A": 1, "Q": 4, "M": 12, "W": 52, "B": 5, "C": 5, "D": 7}
# Fixed steps under a day: the season is a day when it is at most this many steps, else an hour
# when that is at most _MAX_HOURLY steps, else none (1).
_MAX_DAILY, _MAX_HOURLY = 288, 120

_WORDS = [(("YS", "YE", "Y", "A"), "yearly"), (("QS", "QE", "Q"), "quarterly"), (("MS", "ME", "M"), "monthly"),
          (("W",), "weekly"), (("B",), "business daily"), (("D",), "daily"), (("h", "H"), "hourly"),
          (("30min",), "half-hourly")]
_QUARTER = [  # (pattern, template of the label)
    (re.compile(r"^(\d{4})Q([1-4])$", re.I), "{y}Q{q}"),
    (re.compile(r"^(\d{4})-Q([1-4])$", re.I), "{y}-Q{q}"),
    (re.compile(r"^(\d{4}) Q([1-4])$", re.I), "{y} Q{q}"),
    (re.compile(r"^Q([1-4]) (\d{4})$", re.I), "Q{q} {y}"),
    (re.compile(r"^Q([1-4])-(\d{4})$", re.I), "Q{q}-{y}"),
]
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
# Date formats tried in order; a format is kept when every value reads with it and prints back
# exactly as written, so forecasts come out in the input's own form.
_FORMATS = ["%Y-%m-%d", "%Y-%m", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S.%f", "%Y/%m/%d", "%Y/%m", "%Y/%m/%d %H:%M:%S",
            "%Y/%m/%d %H:%M", "%d/%m/%Y", "%m/%d/%Y", "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M",
            "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y", "%d-%m-%Y", "%m-%d-%Y", "%d/%m/%y",
            "%m/%d/%y", "%Y%m%d", "%Y%m", "%b %Y", "%B %Y", "%Y %b", "%b-%y", "%b-%Y", "%Y-%b",
            "%d %b %Y", "%d-%b-%Y", "%d %B %Y", "%B %d, %Y", "%b %d, %Y", "%Y-%m-%d %H:%M:%S%z"]


@dataclass(frozen=True)
class TimeAxis:
    """One series' regular time grid: ``length`` points from ``start`` every ``step``, written as
    ``form``. Every field is text or a number, so it goes into a run's config.json as it is.

    kind "date": start an ISO timestamp, step a pandas offset alias ("MS", "QS-JAN", "W-SUN", "B",
    "30min", "D"), form a strftime format or "datetime64" (a DataFrame's datetime column);
    kind "period": start a pandas Period's text, step its frequency ("Q-DEC"), form a template
    such as "{y}Q{q}" or "period" (a DataFrame's Period column);
    kind "number": start and step numbers as text, form "int" or "float:D" (D decimals).
    """

    kind: str
    start: str
    step: str
    form: str
    length: int

    def labels(self, start: int = 0, stop: int | None = None):
        """The labels of grid positions [start, stop) (default: the whole series), in the input's
        form: a pandas Index of strings, datetimes, Periods, integers or floats."""
        import pandas as pd

        stop = self.length if stop is None else stop
        n = max(stop - start, 0)
        if self.kind == "number":
            v = float(self.start) + float(self.step) * np.arange(start, stop)
            if self.form == "int":
                return pd.Index(np.rint(v).astype(np.int64))
            return pd.Index(np.round(v, int(self.form.split(":")[1])))
        if self.kind == "period":
            p = pd.period_range(pd.Period(self.start, freq=self.step) + start, periods=n, freq=self.step)
            if self.form == "period":
                return p
            return pd.Index([self.form.format(y=x.year, q=x.quarter) for x in p], dtype=object)
        d = pd.date_range(pd.Timestamp(self.start), periods=stop, freq=self.step)[start:]
        if self.form == "datetime64":
            return d
        return pd.Index(d.strftime(self.form), dtype=object)

    def plot_points(self, start: int = 0, stop: int | None = None):
        """Grid positions [start, stop) as values a plot's x-axis orders: datetimes, or numbers."""
        import pandas as pd

        labels = self.labels(start, stop)
        if self.kind == "number":
            return np.asarray(labels, dtype=np.float64)
        if self.kind == "period":
            return pd.PeriodIndex([pd.Period(self.start, freq=self.step) + start + k
                                   for k in range(len(labels))]).to_timestamp()
        stop = self.length if stop is None else stop
        return pd.date_range(pd.Timestamp(self.start), periods=stop, freq=self.step)[start:]

    def calendar(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Calendar features of grid positions [start, stop), each a (n,) float64 array: where in the
        day ("hour"), the week ("dow") and the year ("year": the quarter, month or day of the year)
        each time falls, for each cycle the grid is finer than, as a sine and a cosine (so that a
        cycle's end meets its start): hour_sin, hour_cos, dow_sin, ... A DataError for numbers, or a
        grid as coarse as a year."""
        import pandas as pd

        if self.kind == "number":
            raise DataError("--calendar needs a time column of dates or periods, not numbers")
        t = self.plot_points(start, stop)  # DatetimeIndex
        step = pd.Timestamp(t[1]) - pd.Timestamp(t[0]) if len(t) > 1 else None
        cycles = []
        code = self.step.split("-")[0].upper()
        if code.startswith("Q"):
            cycles.append(("year", (t.quarter - 1) / 4))
        elif code not in ("Y", "YS", "YE", "A", "AS"):
            day = (t.hour * 3600 + t.minute * 60 + t.second) / 86400
            if step is not None and step < pd.Timedelta(days=1):
                cycles.append(("hour", day))
            if step is not None and step < pd.Timedelta(days=7):
                cycles.append(("dow", (t.day_of_week + day) / 7))
            cycles.append(("year", (t.day_of_year - 1) / 365.25 if step is not None and step < pd.Timedelta(days=28)
                           else (t.month - 1) / 12))
        if not cycles:
            raise DataError(f"--calendar has nothing to add to a {self.describe()}: it has no cycle finer than a year")
        out = {}
        for name, phase in cycles:
            angle = 2 * np.pi * np.asarray(phase, dtype=np.float64)
            out[f"{name}_sin"], out[f"{name}_cos"] = np.sin(angle), np.cos(angle)
        return out

    def future(self, steps: int):
        """The labels of the ``steps`` grid points after the series' last one."""
        return self.labels(self.length, self.length + steps)

    def text(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Labels as they are written in a CSV file."""
        labels = self.labels(start, stop)
        if self.kind == "number" and self.form != "int":
            return [f"{v:.{int(self.form.split(':')[1])}f}" for v in labels]
        if self.kind == "date" and self.form == "datetime64":
            return list(labels.strftime(_default_format(labels)))
        return [str(v) for v in labels]

    def position_of(self, other: "TimeAxis") -> int:
        """The grid position on this grid of ``other``'s first point (negative before this start);
        a DataError when the two grids differ or the point is not on this grid."""
        import pandas as pd

        if (other.kind, other.step) != (self.kind, self.step):
            raise DataError(f"the history's times ({other.describe()}) are not on the run's {self.describe()}")
        if self.kind == "number":
            k = (float(other.start) - float(self.start)) / float(self.step)
            if abs(k - round(k)) > 1e-6:
                raise DataError(f"the history starts at {other.start}, off the run's grid of step {self.step} "
                                f"from {self.start}")
            return int(round(k))
        if self.kind == "period":
            return pd.Period(other.start, freq=self.step).ordinal - pd.Period(self.start, freq=self.step).ordinal
        a, b = pd.Timestamp(self.start), pd.Timestamp(other.start)
        grid = pd.date_range(min(a, b), max(a, b), freq=self.step)
        if len(grid) == 0 or grid[0] != min(a, b) or grid[-1] != max(a, b):
            raise DataError(f"the history starts at {b}, off the run's {self.describe()} from {a}")
        return (len(grid) - 1) * (1 if b >= a else -1)

    def resized(self, length: int) -> "TimeAxis":
        """The same grid cut (or continued) to ``length`` points."""
        return replace(self, length=length)

    @property
    def season(self) -> int:
        """The seasonal period the step implies: yearly 1, quarterly 4, monthly 12, weekly 52,
        daily 7, business daily 5, hourly 24, half-hourly 48 (a fixed step under a day: steps a day
        up to 288, else steps an hour up to 120), numbers and other steps 1."""
        return _season(self.kind, self.step)

    def describe(self) -> str:
        """The grid in words: "monthly grid", "half-hourly grid", "grid of step 0.5"."""
        if self.kind != "number":
            code = self.step.split("-")[0]
            for names, word in _WORDS:
                if code in names:
                    return f"{word} grid"
        return f"grid of step {self.step}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "start": self.start, "step": self.step, "form": self.form, "length": self.length}

    @classmethod
    def from_dict(cls, d: dict) -> "TimeAxis":
        return cls(str(d["kind"]), str(d["start"]), str(d["step"]), str(d["form"]), int(d["length"]))


def _default_format(d) -> str:
    """ISO: the date alone where every time is midnight."""
    if len(d) and (d.hour == 0).all() and (d.minute == 0).all() and (d.second == 0).all():
        return "%Y-%m-%d"
    return "%Y-%m-%d %H:%M:%S"


def _season(kind: str, step: str) -> int:
    if kind == "number":
        return 1
    import pandas as pd

    offset = pd.Period(ordinal=0, freq=step).freq if kind == "period" else pd.tseries.frequencies.to_offset(step)
    code = offset.rule_code.split("-")[0].upper()
    nanos = _nanos(offset)
    if nanos is not None and code not in ("W", "B", "C"):  # a fixed step
        if offset.n == 1 and code == "D":
            return 7
        day, hour = 86_400 * 10**9, 3_600 * 10**9
        if nanos < day and day % nanos == 0 and day // nanos <= _MAX_DAILY:
            return day // nanos
        if nanos < hour and hour % nanos == 0 and hour // nanos <= _MAX_HOURLY:
            return hour // nanos
        return 1
    if offset.n != 1:
        return 1
    for key, m in _SEASONS.items():
        if code.startswith(key) or code.startswith(key + "S") or code.startswith(key + "E"):
            return m
    return 1


def _nanos(offset) -> int | None:
    try:
        return int(offset.nanos)
    except ValueError:  # calendar offsets (months, years, ...) have no fixed length
        return None


# ---- reading a time column -------------------------------------------------------------------------

class Times(NamedTuple):
    """A time column read: its kind and form, and its values as numbers that grow with time
    (float64 for numbers, int64 ordinals for periods, datetime64[ns] for dates)."""

    kind: str
    form: str
    points: np.ndarray
    freq: str = ""  # a Period column's frequency


def read_times(column: Any, date_format: str = "", name: str = "time", where: str = "the data",
               at: Callable[[np.ndarray], str] = str) -> Times:
    """Read a time column (a pandas Series of text, numbers, datetimes or Periods). ``at(rows)``
    names rows for messages. A value that cannot be read is a DataError naming its rows."""
    import pandas as pd

    s = pd.Series(column).reset_index(drop=True)
    bad = np.flatnonzero(s.isna().to_numpy())
    if len(bad):
        raise DataError(f"time column {name!r} of {where} is empty at {at(bad)}; every row needs its time")
    if isinstance(s.dtype, pd.PeriodDtype):
        return Times("period", "period", s.array.asi8.astype(np.int64), s.array.freqstr)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return Times("date", "datetime64", _ns(s))
    if pd.api.types.is_bool_dtype(s.dtype):
        raise DataError(f"time column {name!r} of {where} holds true/false values, not times")
    if pd.api.types.is_numeric_dtype(s.dtype) and not date_format:
        v = s.to_numpy(dtype=np.float64)
        if pd.api.types.is_integer_dtype(s.dtype):
            return _numbers_or_compact_dates([str(int(x)) for x in s], v)
        return Times("number", f"float:{_decimals([repr(float(x)) for x in v])}", v)
    text = [str(x).strip() for x in s]
    if date_format:
        return _dates_in_format(text, date_format, name, where, at)
    if all(_NUMBER.match(t) for t in text):
        return _numbers_or_compact_dates(text, np.array([float(t) for t in text]))
    for pattern, template in _QUARTER:
        found = [pattern.match(t) for t in text]
        if all(found):
            yq = [(int(m.group(1)), int(m.group(2))) if template.startswith("{y}") else
                  (int(m.group(2)), int(m.group(1))) for m in found]
            periods = pd.PeriodIndex([pd.Period(year=y, quarter=q, freq="Q-DEC") for y, q in yq])
            return Times("period", template, periods.asi8.astype(np.int64), "Q-DEC")
    return _dates(text, name, where, at)


def _ns(values) -> np.ndarray:
    import pandas as pd

    d = pd.DatetimeIndex(values)
    if d.tz is not None:
        d = d.tz_convert("UTC").tz_localize(None)
    return d.as_unit("ns").asi8.astype(np.int64)


def _decimals(text: list[str]) -> int:
    """Digits after the decimal point, the most any value shows (at least 1 for fractional input)."""
    most = 1
    for t in text:
        if "e" in t.lower():
            return 10
        if "." in t:
            most = max(most, len(t.split(".")[1]))
    return min(most, 10)


def _numbers_or_compact_dates(text: list[str], values: np.ndarray) -> Times:
    """Numbers, unless every value is an 8-digit YYYYMMDD or 6-digit YYYYMM date."""
    for width, fmt in ((8, "%Y%m%d"), (6, "%Y%m")):
        if all(len(t) == width and t.isdigit() for t in text):
            d = _parse(text, fmt)
            if d is not None:
                return Times("date", fmt, d)
    if all("." not in t for t in text):
        return Times("number", "int", values)
    return Times("number", f"float:{_decimals(text)}", values)


def _parse(text: list[str], fmt: str) -> np.ndarray | None:
    """datetime64[ns] as int64 when every value reads with ``fmt`` and prints back as written."""
    import pandas as pd

    try:
        d = pd.to_datetime(pd.Series(text), format=fmt, errors="coerce")
    except (ValueError, TypeError):
        return None
    if d.isna().any():
        return None
    if list(d.dt.strftime(fmt)) != text:
        return None
    return _ns(d)


def _dates_in_format(text: list[str], fmt: str, name: str, where: str, at) -> Times:
    import pandas as pd

    d = pd.to_datetime(pd.Series(text), format=fmt, errors="coerce")
    bad = np.flatnonzero(d.isna().to_numpy())
    if len(bad):
        raise DataError(f"time column {name!r} of {where} does not match --date-format {fmt!r} at {at(bad)} "
                        f"(first: {text[bad[0]]!r})")
    exact = list(d.dt.strftime(fmt)) == text
    return Times("date", fmt if exact else "", _ns(d))


def _dates(text: list[str], name: str, where: str, at) -> Times:
    """Dates in the first format of _FORMATS that reads them all and prints them back; where two
    such formats disagree (day-first against month-first), the one whose dates lie on a regular
    grid, or a DataError asking for --date-format. Else pandas' own reading, written back in ISO."""
    import pandas as pd

    readings = {}
    for fmt in _FORMATS:
        d = _parse(text, fmt)
        if d is not None and not any(np.array_equal(d, other) for other in readings.values()):
            readings[fmt] = d
    if len(readings) > 1:
        regular = {fmt: d for fmt, d in readings.items() if _grid_or_none("date", [d]) is not None}
        if len(regular) == 1:
            readings = regular
        elif len(regular) > 1:
            a, b = list(regular)[:2]
            raise DataError(f"time column {name!r} of {where} reads both as {a!r} and as {b!r} (e.g. "
                            f"{text[0]!r}); say which with --date-format, e.g. --date-format '{a}'")
    if readings:
        fmt, d = next(iter(readings.items()))
        return Times("date", fmt, d)
    with warnings.catch_warnings():  # "could not infer format": the formats above were tried first
        warnings.simplefilter("ignore")
        d = pd.to_datetime(pd.Series(text), errors="coerce", format="mixed")
    bad = np.flatnonzero(d.isna().to_numpy())
    if len(bad):
        raise DataError(f"time column {name!r} of {where} has values that are not dates, quarters or numbers at "
                        f"{at(bad)} (first: {text[bad[0]]!r}); for an unusual date format pass --date-format")
    return Times("date", "", _ns(d))


# ---- the grid --------------------------------------------------------------------------------------

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]


def _calendar_steps(first) -> list[str]:
    """The calendar grids a series starting at ``first`` (a Timestamp) may lie on, coarsest first."""
    mon = _MONTHS[first.month - 1]
    return [f"YS-{mon}", f"YE-{mon}", f"QS-{mon}", f"QE-{mon}", "MS", "ME", f"W-{_DAYS[first.day_of_week]}", "B"]


def _on_calendar(points: np.ndarray, step: str) -> np.ndarray | None:
    """Grid positions of datetime64[ns] points on a calendar grid starting at the first, or None."""
    import pandas as pd

    first, last = pd.Timestamp(points[0]), pd.Timestamp(points[-1])
    grid = pd.date_range(first, last, freq=step)
    if len(grid) == 0 or grid[0] != first:
        return None
    g = grid.as_unit("ns").asi8
    pos = np.searchsorted(g, points)
    if np.any(pos >= len(g)) or not np.array_equal(g[np.minimum(pos, len(g) - 1)], points):
        return None
    return pos


def _grid_or_none(kind: str, series: list[np.ndarray]) -> str | None:
    try:
        return find_grid(kind, series)
    except DataError:
        return None


def find_grid(kind: str, series: list[np.ndarray], freq: str = "") -> str:
    """The step of the coarsest regular grid on which every series' points (each increasing) lie,
    each series from its own first point. Raises DataError when there is none, or when it would
    leave more grid points missing than there are points."""
    import pandas as pd

    longest = max(series, key=len)
    if kind == "period":
        return freq
    diffs = [np.diff(p) for p in series if len(p) > 1]
    if not diffs:
        raise DataError("a time column needs at least two times to tell its step")
    given = sum(len(p) for p in series)
    if kind == "date":
        for step in _calendar_steps(pd.Timestamp(longest[0])):
            positions = [_on_calendar(p, step) for p in series]
            if all(p is not None for p in positions) and _dense(positions, given):
                return step
        step_ns = int(min(d.min() for d in diffs))
        if step_ns > 0 and all(np.all(d % step_ns == 0) for d in diffs):
            positions = [(p - p[0]) // step_ns for p in series]
            if _dense(positions, given):
                return _fixed_alias(step_ns)
        raise DataError("the times are not on a regular grid (yearly, quarterly, monthly, weekly, business "
                        "days, or a fixed step)")
    step = float(min(d.min() for d in diffs))
    positions = [(p - p[0]) / step for p in series]
    if step > 0 and all(np.allclose(q, np.rint(q), rtol=0, atol=1e-6) for q in positions) \
            and _dense([np.rint(q) for q in positions], given):
        return _number_text(step)
    raise DataError("the times are not on a regular grid of one step")


def _fixed_alias(step_ns: int) -> str:
    """A fixed step's pandas alias, whole days as days ("D", "7D") rather than hours."""
    import pandas as pd

    day = 86_400 * 10**9
    if step_ns % day == 0:
        return "D" if step_ns == day else f"{step_ns // day}D"
    return pd.tseries.frequencies.to_offset(pd.Timedelta(step_ns, "ns")).freqstr


def _dense(positions: list[np.ndarray], given: int) -> bool:
    """Whether a grid leaves at most as many points missing as there are points."""
    return sum(int(p[-1]) + 1 for p in positions) <= 2 * given


def _number_text(x: float) -> str:
    return repr(float(round(x, 12))) if not float(x).is_integer() else str(int(x))


def positions(times: Times, step: str, points: np.ndarray) -> tuple[np.ndarray, str]:
    """(grid positions of one series' points, the grid's start as text)."""
    import pandas as pd

    if times.kind == "number":
        return np.rint((points - points[0]) / float(step)).astype(np.int64), _number_text(points[0])
    if times.kind == "period":
        return (points - points[0]).astype(np.int64), str(pd.Period(ordinal=int(points[0]), freq=step))
    start = pd.Timestamp(points[0]).isoformat()
    if len(points) == 1:
        return np.zeros(1, np.int64), start
    pos = _on_calendar(points, step)
    if pos is None:  # a fixed step
        nanos = int(pd.tseries.frequencies.to_offset(step).nanos)
        pos = (points - points[0]) // nanos
    return pos.astype(np.int64), start


def axis(times: Times, step: str, start: str, length: int) -> TimeAxis:
    """The TimeAxis of one series read as ``times``."""
    form = times.form
    if times.kind == "date" and not form:
        import pandas as pd

        form = _default_format(pd.DatetimeIndex(times.points.view("datetime64[ns]")))
    return TimeAxis(times.kind, start, step, form, length)


def describe_missing(ax: TimeAxis, missing: np.ndarray, shown: int = 5) -> str:
    """The first missing grid points' labels, e.g. "2001-03, 2001-04 and 3 more"."""
    labels = ax.text(0, int(missing.max()) + 1) if len(missing) else []
    listed = ", ".join(labels[int(i)] for i in missing[:shown])
    return listed + (f" and {len(missing) - shown} more" if len(missing) > shown else "")


def check_increasing(points: np.ndarray, name: str, where: str, at) -> None:
    """A DataError naming the rows where the times repeat or go back."""
    d = np.diff(points)
    same = np.flatnonzero(d == 0) + 1
    if len(same):
        raise DataError(f"time column {name!r} of {where} repeats a time at {at(same)}; each time may appear once"
                        + (" per id" if "id" in where else ""))
    back = np.flatnonzero(d < 0) + 1
    if len(back):
        raise DataError(f"time column {name!r} of {where} does not increase at {at(back)}; sort the rows by time")

