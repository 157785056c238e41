"""``python -m flowscope``: the command line (``flowscope --help``)."""

import sys

from flowscope.cli import main

sys.exit(main())
