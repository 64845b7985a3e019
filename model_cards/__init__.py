"""Hugging Face Hub model cards for every kind of CrossMat model (see :func:`write_model_card`)."""

from .cards import KINDS, build_model_card, write_model_card

__all__ = ["KINDS", "build_model_card", "write_model_card"]
