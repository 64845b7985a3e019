"""Folder of the ``llm4mat_regression`` evaluate module (a package only so that it ships in the wheel)."""
