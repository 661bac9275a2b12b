"""`python -m bloodcell.cli ...`: the same CLI as the `bloodcell` command."""

import sys

from bloodcell.cli import main

sys.exit(main())
