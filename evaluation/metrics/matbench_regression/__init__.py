"""Folder of the ``matbench_regression`` evaluate module (a package only so that it ships in the wheel)."""
