"""`python -m bloodcell ...` (what torchrun launches): the same CLI as the `bloodcell` command."""

import sys

from bloodcell.cli import main

sys.exit(main())
