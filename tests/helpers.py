"""Helpers shared by the end-to-end tests: the real CLI in a subprocess, and a check that a plot
holds a picture."""

import subprocess
import sys


def rnnkit_cli(*args, cwd, check=True, timeout=300):
    """Run `python -m rnnkit ARGS` in cwd; with check, a non-zero exit fails the test with stderr."""
    proc = subprocess.run([sys.executable, "-m", "rnnkit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rnnkit {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def png_is_not_blank(path) -> bool:
    from matplotlib.image import imread

    img = imread(path)
    return img.ndim == 3 and img.shape[0] > 100 and float(img[..., :3].std()) > 0.05


def bands(*targets: str, levels=(80, 95)) -> list[str]:
    """The interval columns of a forecast after each target's, in the order forecast() writes them."""
    return [c for name in targets for c in [name] + [f"{name}_{side}{lv}" for lv in levels for side in ("lo", "hi")]]


def intervals_hold(fc, name: str, levels=(80, 95)) -> bool:
    """Each level's interval holds the point forecast, and a wider level's holds a narrower one's."""
    lo = [fc[f"{name}_lo{lv}"].to_numpy() for lv in levels]
    hi = [fc[f"{name}_hi{lv}"].to_numpy() for lv in levels]
    point = fc[name].to_numpy()
    return bool((lo[0] <= point).all() and (point <= hi[0]).all()
                and all((a >= b).all() for a, b in zip(lo, lo[1:])) and all((a <= b).all() for a, b in zip(hi, hi[1:])))
