"""``python -m inference`` = ``crossmat-predict``."""

from .predict import main

raise SystemExit(main())
