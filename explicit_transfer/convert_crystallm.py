"""Convert a published CrystaLLM checkpoint (nanoGPT layout, ``ckpt.pt``) into a transformers GPT-2 + CIF tokenizer.

CrystaLLM's ``ckpt.pt`` holds ``model`` (state dict: ``transformer.wte/wpe``, ``transformer.h.<i>.ln_1``,
``attn.c_attn``, ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``transformer.ln_f``, ``lm_head``;
``torch.nn.Linear`` weights, ``_orig_mod.`` prefix when saved from ``torch.compile``) and ``model_args``
(``block_size, vocab_size, n_layer, n_head, n_embd, dropout, bias``). GPT-2 in transformers stores the
same projections as ``Conv1D`` (transposed weights); its ``gelu_new`` is CrystaLLM's tanh GELU.

The token order must be CrystaLLM's: pass a JSON list or a text file with one token per line (escape
newline/space as ``\\n`` / ``\\s``), its ``meta.pkl`` (``itos``; only with ``trust_pickle``, and then read by
an unpickler that refuses every class or function, so it yields plain data or fails), or have the
``crystallm`` package importable.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from .cif_lm import UNK, build_cif_tokenizer

__all__ = ["convert_crystallm_checkpoint", "load_crystallm_vocabulary"]

_TRANSPOSE = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only (dict, list, str, numbers): any class or function reference is refused, so
    loading cannot call code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is read)")


def load_crystallm_vocabulary(vocab: str | Path | None = None, symmetrized: bool = True,
                              trust_pickle: bool = False) -> list[str]:
    """CrystaLLM token list in id order, from JSON / text / ``meta.pkl`` (only with ``trust_pickle``), or from
    an installed ``crystallm``."""
    if vocab is None:
        try:
            from crystallm import get_cif_tokenizer  # type: ignore[import-not-found]
        except ImportError as err:
            raise ValueError("the CrystaLLM token order is needed: pass --vocab <meta.pkl | tokens.json | tokens.txt> "
                             "or install the crystallm package") from err
        t2i = get_cif_tokenizer(symmetrized=symmetrized).token_to_id  # keeps the '_sg' space-group suffix
        return [t for t, _ in sorted(t2i.items(), key=lambda kv: kv[1])]
    path = Path(vocab)
    if not path.exists():
        raise FileNotFoundError(f"vocabulary file {path} not found")
    if path.suffix == ".pkl":
        if not trust_pickle:
            raise ValueError(
                f"{path} is a pickle, which can run code when loaded; convert it to JSON once on a machine you trust "
                "(python -c \"import json,pickle; m=pickle.load(open('meta.pkl','rb')); "
                "json.dump([m['itos'][i] for i in range(len(m['itos']))], open('tokens.json','w'))\") "
                "and pass --vocab tokens.json, or pass --trust-pickle")
        try:
            with path.open("rb") as f:
                meta = _DataOnlyUnpickler(f).load()
            itos = meta["itos"]
            return [itos[i] for i in range(len(itos))]
        except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as err:
            raise ValueError(f"{path} is not a CrystaLLM meta.pkl holding plain data ({err})") from None
    if path.suffix == ".json":
        return list(json.loads(path.read_text()))
    return [ln.replace("\\n", "\n").replace("\\s", " ") for ln in path.read_text().split("\n") if ln != ""]


def _clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("_orig_mod.")
        if k.endswith(".attn.bias") and v.dim() == 4:  # nanoGPT's causal-mask buffer (no flash attention)
            continue
        out[k] = v
    return out


def convert_crystallm_checkpoint(
    ckpt_path: str | Path, output_dir: str | Path | None = None, vocab: str | Path | None = None,
    trust_pickle: bool = False,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Load ``ckpt.pt`` into ``GPT2LMHeadModel`` (+ CIF tokenizer); save both to ``output_dir`` when given.

    ``trust_pickle``: load with ``weights_only=False`` (only for checkpoints you trust; needed when the
    checkpoint pickles non-tensor objects that ``weights_only=True`` refuses) and accept a ``meta.pkl`` vocabulary.
    """
    tokens = load_crystallm_vocabulary(vocab, trust_pickle=trust_pickle)  # first: refuse an untrusted pickle early
    ckpt: dict[str, Any] = torch.load(ckpt_path, map_location="cpu", weights_only=not trust_pickle)
    if "model" not in ckpt or "model_args" not in ckpt:
        raise ValueError(f"{ckpt_path} is not a CrystaLLM/nanoGPT checkpoint (needs 'model' and 'model_args' keys)")
    a = ckpt["model_args"]
    sd = _clean_state_dict(ckpt["model"])
    if len(tokens) > a["vocab_size"]:
        raise ValueError(f"vocabulary has {len(tokens)} tokens but the checkpoint only {a['vocab_size']}")
    tokens += [f"<extra_{i}>" for i in range(a["vocab_size"] - len(tokens))]
    if UNK not in tokens:
        raise ValueError(f"the vocabulary has no {UNK!r} token; is it CrystaLLM's?")
    cfg = GPT2Config(
        vocab_size=a["vocab_size"], n_positions=a["block_size"], n_embd=a["n_embd"], n_layer=a["n_layer"],
        n_head=a["n_head"], activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=a.get("dropout", 0.0),
        embd_pdrop=a.get("dropout", 0.0), attn_pdrop=a.get("dropout", 0.0), tie_word_embeddings=True,
        bos_token_id=tokens.index("data_") if "data_" in tokens else None, eos_token_id=tokens.index("\n"),
        pad_token_id=tokens.index("\n"),
    )
    model = GPT2LMHeadModel(cfg)
    target = model.state_dict()
    new_sd: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        if k not in target:
            raise ValueError(f"unexpected parameter {k!r} in the CrystaLLM checkpoint")
        new_sd[k] = v.t().contiguous() if k.endswith(_TRANSPOSE) else v
    if not a.get("bias", True):  # CrystaLLM bias=False: transformers' GPT-2 always has biases -> zeros
        for k, v in target.items():
            if k.endswith("bias") and k not in new_sd:
                new_sd[k] = torch.zeros_like(v)
    for k, v in new_sd.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)} vs GPT-2 {tuple(target[k].shape)}")
    missing, _ = model.load_state_dict(new_sd, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing:
        raise ValueError(f"parameters missing from the checkpoint: {missing[:5]}")
    model.tie_weights()
    model.eval()
    tokenizer = build_cif_tokenizer(tokens, pad_token=None)
    if output_dir is not None:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    return model, tokenizer
