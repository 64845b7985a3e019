"""``python -m crossmat.cli`` = ``crossmat`` (e.g. under ``accelerate launch -m cli train ...``)."""

import sys

from .main import main

sys.exit(main())
