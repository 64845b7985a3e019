"""Builders that turn official benchmark sources into Hugging Face datasets (parquet + dataset card)."""
