"""``python -m rechunker_core``: the ``rechunker-core`` command line."""

import sys

from rechunker_core.cli import main

sys.exit(main())
