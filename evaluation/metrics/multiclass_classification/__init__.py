"""Folder of the ``multiclass_classification`` evaluate module (a package only so that it ships in the wheel)."""
