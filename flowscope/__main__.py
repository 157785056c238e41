"""``python -m flowscope``: the command line (``flowscope --help``)."""

import sys

from exporter.cli import main

sys.exit(main())
