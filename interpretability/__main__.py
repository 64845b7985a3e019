"""Entry point of ``python -m interpretability``."""

import sys

from .cli import main

sys.exit(main())
