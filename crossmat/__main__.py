"""``python -m crossmat``: the ``crossmat`` command, for environments where the console script is not on PATH."""

import sys

from crossmat.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
