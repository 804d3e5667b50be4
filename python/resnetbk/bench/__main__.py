"""``python -m resnetbk.bench``: the benchmark's command line (``resnetbk.bench.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
