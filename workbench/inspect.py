"""`python -m workbench.inspect`: the compiled resource inspector: registers, shared memory, spills, occupancy per rung.
The code lives in `workbench.bench.resources`; this module only keeps the documented command."""

import sys

from workbench.bench.resources import main

if __name__ == "__main__":
    sys.exit(main())
