"""`python -m leaneye_compress.cli` = `leaneye-compress`."""

import sys

from . import main

sys.exit(main())
