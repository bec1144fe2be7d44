"""``python -m benchmarks``: run the suite (``--help`` for the options)."""

import sys

from benchmarks.run import main

sys.exit(main())
