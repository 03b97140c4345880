"""``python -m pickleguard``: the command line (see ``pickleguard.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
