"""A corpus of user mistakes driven through the real `rnnkit` command, one subprocess each: every one
exits 2 with exactly one line `error: ...` on stderr, no traceback, and leaves every file as it was
(runs included: a failing command never modifies an existing run)."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import rnnkit
from rnnkit.runs import CHECKPOINT, CONFIG, WEIGHTS, write_json

TINY = ["--num-samples", "200", "--seq-length", "10", "--hidden-size", "4", "--epochs", "1"]
GOOD_CSV = "t,y\n" + "".join(f"2000-01-{d:02d},{np.sin(d / 3):.4f}\n" for d in range(1, 29))

# (id, argv, a piece of the expected message). Paths are relative to the corpus directory; "good" is a
# finished run, "good.csv" a usable CSV. Every `train` case targets --out good, which must survive.
CASES = [
    # argparse
    ("no-command", [], "required: COMMAND"),
    ("unknown-command", ["fly"], "invalid choice"),
    ("unknown-flag", ["train", "--bogus", "--out", "good"], "unrecognized arguments: --bogus"),
    ("int-flag-not-int", ["train", "--epochs", "ten", "--out", "good"], "invalid int value"),
    ("unknown-cell", ["train", "--cell", "transformer", "--out", "good"], "invalid choice: 'transformer'"),
    ("zero-threads", ["train", "--threads", "0", "--out", "good"], "--threads must be >= 1"),
    ("missing-value", ["test", "--run"], "expected one argument"),
    # flag values
    ("negative-epochs", ["train", "--epochs", "-3", "--out", "good"], "train.epochs must be >= 0"),
    ("zero-batch", ["train", "--batch-size", "0", "--out", "good"], "data.batch_size must be >= 1"),
    ("negative-hidden", ["train", "--hidden-size", "-1", "--out", "good"], "model.hidden_size must be >= 1"),
    ("zero-lr", ["train", "--lr", "0", "--out", "good"], "train.lr must be positive"),
    ("nan-lr", ["train", "--lr", "nan", "--out", "good"], "train.lr must be a finite number"),
    ("inf-lr", ["train", "--lr", "inf", "--out", "good"], "train.lr must be a finite number"),
    ("dropout-above-1", ["train", "--dropout", "1.5", "--out", "good"], "model.dropout"),
    ("zero-checkpoint-every", ["train", "--checkpoint-every", "0", "--out", "good"], "checkpoint_every"),
    ("series-too-short", ["train", "--seq-length", "1000", "--out", "good", "--force"], "too few"),
    # config files
    ("bad-toml", ["train", "--config", "bad.toml", "--out", "good"], "not valid TOML"),
    ("unknown-toml-key", ["train", "--config", "unknown.toml", "--out", "good"], "unknown key(s) in [model]"),
    ("binary-toml", ["train", "--config", "binary.toml", "--out", "good"], "not valid TOML"),
    ("missing-toml", ["train", "--config", "nope.toml", "--out", "good"], "does not exist"),
    ("wrong-type-toml", ["train", "--config", "typed.toml", "--out", "good"], "train.epochs must be int"),
    # --out / --resume
    ("out-holds-a-run", ["train", *TINY, "--out", "good"], "already holds a run"),
    ("out-is-a-file", ["train", *TINY, "--out", "a_file"], "is a file"),
    ("out-under-a-file", ["train", *TINY, "--out", "a_file/run"], "is a file"),
    ("resume-missing", ["train", "--resume", "missing"], "does not exist"),
    ("resume-empty", ["train", "--resume", "empty"], "is empty"),
    ("resume-with-flags", ["train", "--resume", "good", "--epochs", "3", "--lr", "0.1"], "drop --lr"),
    ("resume-epochs-not-more", ["train", "--resume", "good", "--epochs", "1"], "has trained 2 epochs; give --epochs "
                                                                             "above 2"),
    ("resume-edited", ["train", "--resume", "edited"], "do not match its config.json"),
    # run directories
    ("run-missing", ["test", "--run", "missing"], "does not exist"),
    ("run-empty", ["test", "--run", "empty"], "is empty"),
    ("run-not-a-run", ["visualize", "--run", "not_a_run"], "has no config.json"),
    ("run-no-weights", ["test", "--run", "no_weights"], "no checkpoint"),
    ("run-truncated-weights", ["test", "--run", "truncated"], "not a valid safetensors file"),
    ("run-binary-weights", ["test", "--run", "garbage"], "not a valid safetensors file"),
    ("run-pickle-weights", ["test", "--run", "pickled"], "not a valid safetensors file"),
    ("run-edited-config", ["visualize", "--run", "edited"], "do not match its config.json"),
    ("run-config-not-json", ["test", "--run", "bad_json"], "cannot read"),
    ("run-config-binary", ["test", "--run", "binary_config"], "cannot read"),
    ("run-nan-in-scaler", ["test", "--run", "nan_scaler"], "not a finite number"),
    ("run-invalid-value", ["test", "--run", "bad_value"], "train.lr must be positive"),
    ("run-nan-weights", ["test", "--run", "nan_weights"], "hold NaN"),
    ("run-truncated-checkpoint", ["test", "--run", "truncated_checkpoint"], "not a valid safetensors file"),
    ("run-foreign-checkpoint", ["test", "--run", "foreign_checkpoint"], "does not belong"),
    # the seed's .pth
    ("pth-missing", ["import-seed", "nope.pth", "--out", "new"], "does not exist"),
    ("pth-garbage", ["import-seed", "garbage.pth", "--out", "new"], "not a PyTorch checkpoint"),
    ("pth-evil-pickle", ["import-seed", "evil.pth", "--out", "new"], "refused to load"),
    ("pth-into-a-run", ["import-seed", "seed.pth", "--out", "good"], "already holds a run"),
    # CSV input
    ("csv-missing", ["train", "--data", "nope.csv", "--target", "y", "--out", "good", "--force"], "does not exist"),
    ("csv-empty", ["train", "--data", "empty.csv", "--target", "y", "--out", "good", "--force"], "is empty"),
    ("csv-header-only", ["train", "--data", "header.csv", "--target", "y", "--out", "good", "--force"],
     "has a header but no rows"),
    ("csv-binary", ["train", "--data", "binary.csv", "--target", "y", "--out", "good", "--force"], "binary.csv"),
    ("csv-ragged", ["train", "--data", "ragged.csv", "--target", "y", "--out", "good", "--force"], "ragged.csv"),
    ("csv-wrong-column", ["train", "--data", "good.csv", "--target", "z", "--out", "good", "--force"],
     "has no column 'z'"),
    ("csv-not-numbers", ["train", "--data", "words.csv", "--target", "y", "--out", "good", "--force"],
     "non-numeric cells at line 3"),
    ("csv-missing-values", ["train", "--data", "gaps.csv", "--target", "y", "--out", "good", "--force"],
     "missing values"),
    ("csv-inf", ["train", "--data", "inf.csv", "--target", "y", "--out", "good", "--force"], "infinite values"),
    ("csv-too-short", ["train", "--data", "short.csv", "--target", "y", "--out", "good", "--force"],
     "has 2 points; a series needs at least 3"),
    ("csv-bad-separator", ["train", "--data", "semicolons.csv", "--target", "y", "--out", "good", "--force"],
     "pass --sep ';'"),
    ("levels-over-100", ["train", *TINY, "--levels", "80,120", "--out", "good", "--force"],
     "data.levels must list percentages such as 80,95: a prediction interval level must be between 0 and 100"),
    ("levels-not-numbers", ["predict", "--run", "good", "--levels", "80,high", "--out", "f.csv"],
     "a prediction interval level is a percentage such as 80 or 95, got 'high'"),
    ("csv-future-target", ["train", "--data", "two.csv", "--target", "y", "--future-features", "y", "--out", "good",
                           "--force"], "column 'y' is a target: its future is what is forecast, not an input known "
                                       "ahead; drop it from --future-features"),
    ("csv-calendar-no-time", ["train", "--data", "two.csv", "--target", "y", "--calendar", "yes", "--out", "good",
                              "--force"], "--calendar makes features from the time column; name it with --time-col"),
    ("predict-future-no-run-features", ["predict", "--run", "good", "--future", "two.csv", "--out", "f.csv"],
     "this run reads no future features (--future-features); drop --future"),
    ("csv-recursive-features", ["train", "--data", "two.csv", "--target", "y", "--features", "x", "--strategy",
                                "recursive", "--out", "good", "--force"], "drop --features, --future-features and --calendar, or use --strategy direct"),
    ("csv-missing-dates", ["train", "--data", "holes.csv", "--target", "y", "--time-col", "t", "--out", "good",
                           "--force"], "misses 2 times of its daily grid: 2000-01-05, 2000-01-06"),
    ("csv-ambiguous-dates", ["train", "--data", "ambiguous.csv", "--target", "y", "--time-col", "t", "--out",
                             "good", "--force"], "--date-format"),
    ("csv-date-format-mismatch", ["train", "--data", "good.csv", "--target", "y", "--time-col", "t",
                                  "--date-format", "%d/%m/%Y", "--out", "good", "--force"],
     "does not match --date-format '%d/%m/%Y' at lines 2, 3"),
    ("csv-id-duplicate-time", ["train", "--data", "panel_dup.csv", "--target", "y", "--time-col", "t",
                               "--id-col", "id", "--out", "good", "--force"], "repeats a time at line 5"),
    ("csv-id-too-short", ["train", "--data", "panel_short.csv", "--target", "y", "--time-col", "t",
                          "--id-col", "id", "--out", "good", "--force"], "id 'b' has 2 points"),
    ("csv-time-backwards", ["train", "--data", "backwards.csv", "--target", "y", "--time-col", "t", "--out",
                            "good", "--force"], "does not increase"),
    ("predict-out-unwritable", ["predict", "--run", "good", "--out", "a_file/forecast.csv"], "cannot write"),
]


def make_corpus(root: Path) -> None:
    torch.set_num_threads(1)
    good = root / "good"
    rnnkit.Forecaster(num_samples=200, seq_length=10, hidden_size=4, epochs=2).fit(
        log=None, progress=False, run_dir=good)
    meta = json.loads((good / CONFIG).read_text())

    def run_copy(name, drop=()):
        d = root / name
        d.mkdir()
        for p in good.iterdir():
            if p.name not in drop:
                (d / p.name).write_bytes(p.read_bytes())
        return d

    (root / "empty").mkdir()
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("mine\n")
    run_copy("no_weights", drop=(WEIGHTS, CHECKPOINT))
    d = run_copy("truncated")
    (d / WEIGHTS).write_bytes((good / WEIGHTS).read_bytes()[:300])
    run_copy("garbage")
    (root / "garbage" / WEIGHTS).write_bytes(os.urandom(2000))
    run_copy("pickled")
    (root / "pickled" / WEIGHTS).write_bytes(pickle.dumps({"W": np.zeros(3)}))
    d = run_copy("edited")
    write_json(d / CONFIG, {**meta, "config": {**meta["config"], "model": {**meta["config"]["model"], "hidden_size": 5}}})
    run_copy("bad_json")
    (root / "bad_json" / CONFIG).write_text("{not json")
    run_copy("binary_config")
    (root / "binary_config" / CONFIG).write_bytes(os.urandom(500))
    run_copy("nan_scaler")
    write_json(root / "nan_scaler" / CONFIG, {**meta, "scalers": [{**meta["scalers"][0], "mean": [float("nan")]}]})
    # A value only the config's own validation can catch: weights without the config digest (as a
    # hand-made run might have), so the edited config.json is not refused for the mismatch first.
    d = run_copy("bad_value")
    write_json(d / CONFIG, {**meta, "config": {**meta["config"], "train": {**meta["config"]["train"], "lr": -1.0}}})
    save_file(load_file(good / WEIGHTS), d / WEIGHTS)
    d = run_copy("nan_weights")
    w = load_file(good / WEIGHTS)
    w[next(iter(w))][0] = float("nan")
    from rnnkit.runs import meta_digest
    save_file(w, d / WEIGHTS, metadata={"config_sha256": meta_digest(meta)})
    d = run_copy("truncated_checkpoint", drop=(WEIGHTS,))
    (d / CHECKPOINT).write_bytes((good / CHECKPOINT).read_bytes()[:-100])
    other = root / "other_run_tmp"
    rnnkit.Forecaster(num_samples=200, seq_length=10, hidden_size=4, epochs=1, seed=1).fit(
        log=None, progress=False, run_dir=other)
    d = run_copy("foreign_checkpoint", drop=(WEIGHTS,))
    (d / CHECKPOINT).write_bytes((other / CHECKPOINT).read_bytes())
    for p in other.iterdir():
        p.unlink()
    other.rmdir()

    (root / "a_file").write_text("not a directory\n")
    (root / "bad.toml").write_text("[model\n")
    (root / "unknown.toml").write_text("[model]\nhiden_size = 3\n")
    (root / "binary.toml").write_bytes(b"\x00\xff\xfe" + os.urandom(200))
    (root / "typed.toml").write_text('[train]\nepochs = "ten"\n')
    (root / "garbage.pth").write_bytes(b"PK\x03\x04 not really a zip" * 20)
    (root / "evil.pth").write_bytes(pickle.dumps(Payload(root / "pwned"), protocol=2))
    seed = rnnkit.CustomRNN(1, 4, 1)
    torch.save({k: v for k, v in seed.state_dict().items()}, root / "seed.pth")

    (root / "good.csv").write_text(GOOD_CSV)
    (root / "empty.csv").write_bytes(b"")
    (root / "header.csv").write_text("t,y\n")
    (root / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3000))
    (root / "ragged.csv").write_text("t,y\n1,2\n3,4,5,6\n7,8\n")
    (root / "words.csv").write_text("y\n1.0\nabc\n3.0\n")
    (root / "gaps.csv").write_text("x,y\n" + "".join(f"{v},{v if v % 7 else ''}\n" for v in range(1, 40)))
    (root / "inf.csv").write_text("y\n" + "".join(f"{v}\n" for v in range(30)) + "inf\n")
    (root / "short.csv").write_text("y\n1\n2\n")
    (root / "semicolons.csv").write_text("t;y\n1;2\n2;3\n3;4\n")
    (root / "two.csv").write_text("y,x\n" + "".join(f"{v},{v % 3}\n" for v in range(30)))
    (root / "holes.csv").write_text("t,y\n" + "".join(f"2000-01-{d:02d},{d}\n" for d in range(1, 20) if d not in (5, 6)))
    (root / "ambiguous.csv").write_text("t,y\n" + "".join(f"01/{m:02d}/2000,{m}\n" for m in range(1, 10)))
    (root / "panel_dup.csv").write_text("id,t,y\na,1,1\na,2,2\nb,1,3\na,2,4\nb,2,5\nb,3,6\na,3,7\n")
    (root / "panel_short.csv").write_text("id,t,y\na,1,1\na,2,2\nb,1,3\na,3,4\nb,2,5\na,4,7\n")
    (root / "backwards.csv").write_text(GOOD_CSV.replace("2000-01-05", "1999-01-05"))


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Build the corpus, run every case (4 at a time: most of each is Python starting), and return
    ({case id: CompletedProcess}, snapshot before, snapshot after)."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root)
    before = snapshot(root)

    def run(case):
        return subprocess.run([sys.executable, "-m", "rnnkit", *case[1]], cwd=root, capture_output=True,
                              text=True, timeout=300)

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip([c[0] for c in CASES], pool.map(run, CASES)))
    return root, results, before, snapshot(root)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_user_mistake_is_one_line_exit_2(corpus, case):
    _, results, _, _ = corpus
    name, argv, expected = case
    proc = results[name]
    assert proc.returncode == 2, (argv, proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_no_failing_command_changed_a_file(corpus):
    root, _, before, after = corpus
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed
    assert not (root / "pwned").exists()  # the evil .pth never ran
