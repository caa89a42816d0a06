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
