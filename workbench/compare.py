"""`python -m workbench.compare`: compares every rung (python -m workbench.compare --help).
The code lives in `workbench.bench.compare`; this module only keeps the documented command."""

import sys

from workbench.bench.compare import main

if __name__ == "__main__":
    sys.exit(main())
