"""``python -m bench``: the benchmark on its own (``strata bench`` runs the same)."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
