"""``python -m rnnkit.experiments EXPERIMENT ...``: the same as ``rnnkit experiment EXPERIMENT ...``."""

import argparse
import sys

from ..errors import RnnkitError, on_the_command_line
from . import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m rnnkit.experiments", description=__doc__.split("\n")[0])
add_arguments(parser)
args = parser.parse_args()
with on_the_command_line():  # errors say the flags
    try:
        sys.exit(run(args))
    except RnnkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
