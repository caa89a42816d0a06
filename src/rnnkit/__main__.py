"""`python -m rnnkit` = the `rnnkit` command (also how torchrun starts each worker)."""

import sys

from . import distributed
from .cli import main

code = main()
if distributed.in_worker():
    distributed.leave(code)
sys.exit(code)
