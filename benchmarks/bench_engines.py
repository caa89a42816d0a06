"""Engine benchmark: rnnkit fused, rnnkit reference and torch.nn, train step and inference.

The same as ``rnnkit bench`` (see :mod:`rnnkit.bench` for what is timed and how); this script is the
command the tables in benchmarks/README.md were made with:

    .venv/bin/python benchmarks/bench_engines.py [--quick] [--sizes 32x50x32,...] [--cells rnn,gru]
"""

import argparse
import sys

from rnnkit import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_arguments(parser)
    sys.exit(bench.run(parser.parse_args()))
