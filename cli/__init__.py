"""The ``crossmat`` console command (``crossmat --help``); see :mod:`cli.main`."""

from .main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
