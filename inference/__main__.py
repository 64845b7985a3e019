"""``python -m crossmat.inference`` = ``crossmat-predict``."""

from .predict import main

raise SystemExit(main())
