"""``python -m cimc.cli ...`` = ``cimc ...``."""

import sys

from . import main

sys.exit(main())
