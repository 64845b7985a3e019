"""Jinja templates of the CrossMat model cards (package so the templates ship in wheels)."""
