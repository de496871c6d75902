"""`python -m pgsessions.cli`: the `pgsessions` command."""

import sys

from . import main

sys.exit(main())
