"""``python -m snows_hf``: the same as the ``snows-hf`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
