"""`python -m leaneye.cli` = `leaneye`."""

import sys

from . import main

sys.exit(main())
