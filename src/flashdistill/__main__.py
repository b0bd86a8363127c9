"""`python -m flashdistill ARGS` runs the `flashdistill` command, e.g. `python -m flashdistill distill RECIPE` or, on
N processes, `torchrun --standalone --nproc_per_node=N -m flashdistill distill RECIPE --out DIR`."""

import sys

from flashdistill.cli import main

if __name__ == "__main__":
    sys.exit(main())
