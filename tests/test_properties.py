"""Property-based tests (hypothesis) of the CSV reader and the windowing: whatever the input, the reader
returns the file's numbers or raises a DataError naming the bad lines, never anything else; windows are
exactly the slices the docs describe, and splits never leak a target across parts."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rnnkit.csvdata import read_csv
from rnnkit.data import chronological_split, make_windows, num_windows
from rnnkit.errors import DataError, RnnkitError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


# ---- windowing -----------------------------------------------------------------------------------------

@FAST
@given(st.data())
def test_windows_are_the_documented_slices(data):
    n = data.draw(st.integers(1, 40))
    f = data.draw(st.integers(1, 3))
    series = data.draw(arrays(np.float64, (n, f), elements=st.floats(-1e3, 1e3, width=32)))
    seq_length = data.draw(st.integers(1, 12))
    horizon = data.draw(st.integers(1, 4))
    cols = tuple(data.draw(st.lists(st.integers(0, f - 1), min_size=1, max_size=f, unique=True)))
    W = num_windows(n, seq_length, horizon)
    if W < 1:
        with pytest.raises(DataError, match="too short"):
            make_windows(series, seq_length, horizon, target_cols=cols)
        return
    x, y = make_windows(series, seq_length, horizon, target_cols=cols).tensors
    assert x.shape == (W, seq_length, f) and y.shape == (W, horizon, len(cols))
    s32 = series.astype(np.float32)
    for i in range(W):
        np.testing.assert_array_equal(x[i].numpy(), s32[i:i + seq_length])
        np.testing.assert_array_equal(y[i].numpy(), s32[i + seq_length:i + seq_length + horizon][:, list(cols)])


@FAST
@given(n=st.integers(2, 400), seq_length=st.integers(1, 60), horizon=st.integers(1, 12),
       train_ratio=st.floats(0.05, 0.95), val_ratio=st.floats(0.0, 0.9))
def test_splits_are_ordered_and_leak_no_target(n, seq_length, horizon, train_ratio, val_ratio):
    try:
        s = chronological_split(n, seq_length, horizon, train_ratio, val_ratio)
    except DataError as e:
        assert "too few" in str(e) or "windows" in str(e)
        return
    W = num_windows(n, seq_length, horizon)
    assert 0 == s.train.start < s.train.stop <= s.val.start <= s.val.stop <= s.test.start < s.test.stop <= W
    targets = lambda r: set(range(r.start + seq_length, r.stop - 1 + seq_length + horizon)) if len(r) else set()  # noqa: E731
    assert not targets(s.train) & targets(s.val) and not targets(s.train) & targets(s.test)
    assert not targets(s.val) & targets(s.test)
    # The scaler sees the points up to fit_end: every training point, and no test target.
    assert max(targets(s.train)) < s.fit_end <= min(targets(s.test))
    assert s.fit_end <= n


@FAST
@given(st.data())
def test_short_windows_repeat_the_first_point_and_mask_the_unknown(data):
    n = data.draw(st.integers(1, 30))
    f = data.draw(st.integers(1, 3))
    series = data.draw(arrays(np.float64, (n, f), elements=st.floats(-1e3, 1e3, width=32)))
    S, H = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 5))
    known = data.draw(st.integers(1, n))
    cols = tuple(data.draw(st.lists(st.integers(0, f - 1), min_size=1, max_size=f, unique=True)))
    windows = range(1 - S, n - S)
    x, y, mask = make_windows(series, S, H, windows, cols, known).tensors
    s32 = series.astype(np.float32)
    padded = np.concatenate([np.repeat(s32[:1], S - 1, axis=0), s32])  # row i of the series at i + S - 1
    for k, i in enumerate(windows):
        np.testing.assert_array_equal(x[k].numpy(), padded[i + S - 1:i + 2 * S - 1])
        for h in range(H):
            t = i + S + h
            if t < known:
                np.testing.assert_array_equal(y[k, h].numpy(), s32[t, list(cols)])
                assert mask[k, h].min() == 1
            else:
                assert y[k, h].abs().max() == 0 and mask[k, h].max() == 0


@FAST
@given(n=st.integers(3, 300), seq_length=st.integers(1, 60), horizon=st.integers(1, 12),
       train_ratio=st.floats(0.05, 0.95), val_ratio=st.floats(0.0, 0.9))
@example(n=4, seq_length=1, horizon=1, train_ratio=0.5, val_ratio=0.5)  # no test part: no validation either
def test_short_splits_train_on_every_series_and_leak_no_target(n, seq_length, horizon, train_ratio, val_ratio):
    S, H = seq_length, horizon
    s = chronological_split(n, S, H, train_ratio, val_ratio, short=True)
    first_targets = lambda r: range(r.start + S, r.stop + S)  # noqa: E731
    assert len(s.train) >= 1 and s.train.start + S >= 1  # every training window has an input point
    assert max(first_targets(s.train)) < s.known  # and a known target
    if len(s.val):  # whole windows, after everything training sees
        assert min(first_targets(s.val)) == s.known and max(first_targets(s.val)) + H <= s.origin
    if len(s.test):
        assert min(first_targets(s.test)) == s.origin >= s.known >= 3 and max(first_targets(s.test)) + H <= n
    else:
        assert n - max(H, round((1 - train_ratio) * n)) < 3 and s.known == n


# ---- the CSV reader ------------------------------------------------------------------------------------

def write(tmp_path, text: bytes, name="data.csv"):
    path = tmp_path / name
    path.write_bytes(text)
    return path


@FAST
@given(values=arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 3)), elements=finite))
def test_numbers_round_trip_exactly(tmp_path, values):
    cols = [f"c{j}" for j in range(values.shape[1])]
    text = ",".join(cols) + "\n" + "".join(",".join(repr(float(v)) for v in row) + "\n" for row in values)
    table = read_csv(write(tmp_path, text.encode()), target=cols[0], features=",".join(cols[1:])).series[0]
    np.testing.assert_array_equal(table.values, values)
    assert table.columns == tuple(cols) and table.n_targets == 1


@FAST
@given(values=arrays(np.float64, st.integers(3, 30), elements=finite), data=st.data())
def test_missing_cells_are_named_or_filled(tmp_path, values, data):
    gaps = sorted(data.draw(st.sets(st.integers(0, len(values) - 1), min_size=1, max_size=len(values) - 1)))
    text = "x,y\n" + "".join(f"{i},{'' if i in gaps else repr(float(v))}\n" for i, v in enumerate(values))
    path = write(tmp_path, text.encode())
    with pytest.raises(DataError, match=f"missing values in 'y' at lines? {gaps[0] + 2}\\b"):
        read_csv(path, target="y")
    filled = read_csv(path, target="y", fill="interpolate").series[0].values[:, 0]
    assert np.all(np.isfinite(filled))
    keep = [i for i in range(len(values)) if i not in gaps]
    np.testing.assert_array_equal(filled[keep], values[keep])
    lo, hi = values[keep].min(), values[keep].max()
    assert np.all((filled >= lo - 1e-9 * abs(lo)) & (filled <= hi + 1e-9 * abs(hi)))  # linear: between neighbours


@FAST
@given(values=arrays(np.float64, st.integers(1, 20), elements=finite), data=st.data())
def test_a_non_number_is_named_by_its_line(tmp_path, values, data):
    row = data.draw(st.integers(0, len(values) - 1))
    word = data.draw(st.sampled_from(["abc", "1,5e", "--", "n/a?", "12x"]))
    cells = [repr(float(v)) for v in values]
    cells[row] = f'"{word}"'
    path = write(tmp_path, ("y\n" + "\n".join(cells) + "\n").encode())
    with pytest.raises(DataError, match=f"non-numeric cells at line {row + 2}\\b"):
        read_csv(path, target="y")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=300),
    st.text(alphabet=st.sampled_from(list("y,x\n\r\"' 0123456789.-eEnaif\t;")), max_size=200).map(str.encode),
))
def test_any_bytes_give_a_series_or_a_data_error(tmp_path, blob):
    try:
        table = read_csv(write(tmp_path, blob), target="y").series[0]
    except RnnkitError:
        return
    assert table.values.dtype == np.float64 and table.values.ndim == 2 and table.values.shape[1] == 1
    assert all(math.isfinite(v) for v in table.values.ravel())
