"""Entry point of ``python -m crossmat.interpretability``."""

import sys

from .cli import main

sys.exit(main())
