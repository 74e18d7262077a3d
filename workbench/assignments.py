"""`python -m workbench.assignments`: release, grade and validate the course's assignments.
The code lives in `workbench.course.assignments`; this module only keeps the documented command."""

import sys

from workbench.course.assignments import main

if __name__ == "__main__":
    sys.exit(main())
