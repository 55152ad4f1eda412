"""``python -m aiovirt``: the ``aiovirt`` command (the console script's ``aiovirt.cli:main``)."""

import sys

from .cli import main

sys.exit(main())
