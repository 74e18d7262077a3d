"""`python -m workbench.report`: rewrites the README's measured tables from figures/<device>/*.json.
The code lives in `workbench.bench.report`; this module only keeps the documented command."""

import sys

from workbench.bench.report import main

if __name__ == "__main__":
    sys.exit(main())
