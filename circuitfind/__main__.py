"""``python -m circuitfind``: the same as the ``circuitfind`` command."""

import sys

from circuitfind.cli.main import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
