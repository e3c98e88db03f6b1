"""`python -m normcore ...` runs the command line."""

import sys

from normcore.cli import main

sys.exit(main())
