"""``python -m crossmat.dataset_builders <matbench|llm4mat|corpus|embeddings|publish> --help``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
