"""Folder of the ``llm4mat_classification`` evaluate module (a package only so that it ships in the wheel)."""
