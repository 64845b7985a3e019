"""CrossMat training entry point: ``accelerate launch train.py [--config configs/<recipe>.yaml] [--output-dir DIR]
[--resume] [--push-to-hub REPO] [key=value ...]``. Without ``--config`` it runs the quickstart pipeline
(MLM -> imKT -> fine-tune + test on pip-shipped real data). See docs/training.md."""

import sys

from crossmat.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
