"""The CIF language model's architecture: a GPT-2 over the CIF vocabulary (CrystaLLM's design). The tokenizer
(:func:`dataset_builders.cif_text.build_cif_tokenizer`) is passed in; training and sampling live in
``training`` (the ``cif_lm`` stage) and ``explicit_transfer.cif_lm``."""

from __future__ import annotations

from typing import Any

from transformers import GPT2Config, GPT2LMHeadModel

__all__ = ["new_cif_lm"]


def new_cif_lm(tokenizer: Any, n_embd: int = 128, n_layer: int = 4, n_head: int = 4,
               n_positions: int = 512, dropout: float = 0.0) -> GPT2LMHeadModel:
    """A fresh GPT-2 over the CIF vocabulary (CrystaLLM's architecture, ``gelu_new``, tied embeddings)."""
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, activation_function="gelu_new",
                     layer_norm_epsilon=1e-5, bos_token_id=tokenizer.convert_tokens_to_ids("data_"),
                     eos_token_id=tokenizer.convert_tokens_to_ids("\n"), pad_token_id=tokenizer.pad_token_id,
                     tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg)
    model.generation_config.eos_token_id = None  # a CIF ends with a blank line, not at its first newline
    return model
