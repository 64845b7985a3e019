"""Fast batched prediction for CrossMat property models: validate, tokenise, sort by length, predict.

:class:`FormulaPredictor` is what the batch CLI and the app use. Its fast path runs the transformer
only on the tokens the encoder attends to ([CLS] and one slot per distinct element; digits and
brackets only carry amounts, which are decoded first), which gives the same outputs as the model's own
``forward`` at a fraction of the cost. A self-check at load compares both on real formulas and falls
back to the plain ``forward`` (with a warning) if they ever disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification
from transformers.masking_utils import create_bidirectional_mask

import modeling  # noqa: F401  (registers CrossMat with the Auto classes)
from modeling import decode_composition
from modeling.pipeline_crossmat import DEFAULT_MAX_CHARS
from tokenization import CrossMatTokenizerFast

__all__ = ["DEFAULT_MAX_CHARS", "PRECISIONS", "FormulaPredictor", "Predictions"]

PRECISIONS = ("float32", "bfloat16", "int8")

_SELF_CHECK = ["Fe2O3", "LiCoO2", "(NH4)2SO4", "Li0.5Co0.5O2", "SrTiO3", "NaCl", "Fe0.62C0.000953Mn0.3Cr0.079047"]


@dataclass
class Predictions:
    """Outputs for a batch of formulas, in input order.

    ``values``: ``(n, num_labels)`` float64 — physical units for regression, class probabilities for
    classification; rows with an error are NaN. ``errors``: ``None`` or the reason per row.
    """

    values: np.ndarray
    errors: list[str | None]

    @property
    def n_invalid(self) -> int:
        return sum(e is not None for e in self.errors)


class FormulaPredictor:
    """Load a CrossMat property model (folder or Hub id) and predict batches of formulas."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str | None = None,
        batch_size: int = 2048,
        max_chars: int = DEFAULT_MAX_CHARS,
        fast: bool = True,
        precision: str = "float32",
    ) -> None:
        self.model_path = str(model)
        try:
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                self.model_path, output_loading_info=True
            )
        except OSError as err:
            raise OSError(
                f"cannot load a CrossMat model from {self.model_path!r}: {err}. Pass a local model folder "
                "(with config.json and model.safetensors) or a Hub id reachable from this machine."
            ) from None
        untrained = [k for k in info.get("missing_keys", ()) if k.startswith("head.")]
        if untrained:
            raise ValueError(
                f"{self.model_path!r} is not a property model: its checkpoint has no trained property head "
                f"(missing {sorted(untrained)[:2]}); fine-tune it first (see docs/training.md)"
            )
        self.tokenizer = CrossMatTokenizerFast.from_pretrained(self.model_path)
        self.device = torch.device(device or "cpu")
        self.model.to(self.device).eval()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError("precision 'int8' (dynamic quantisation) runs on the CPU only")
        self.batch_size = int(batch_size)
        self.max_chars = int(max_chars)
        self.max_tokens = int(min(self.tokenizer.model_max_length or 256, 10**6))
        cfg = self.model.config
        self.problem_type = cfg.problem_type or ("regression" if cfg.num_labels == 1 else "single_label_classification")
        labels = {int(k): v for k, v in (cfg.id2label or {}).items()}
        self.labels = [labels.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]
        self.target_names = list(cfg.target_names or (self.labels if self.problem_type == "regression" else []))
        self.target_units = list(cfg.target_units or [""] * cfg.num_labels)
        self.fast = fast and self._fast_path_available() and self._self_check()  # checked in float32
        if precision == "bfloat16":  # the encoder in bfloat16; the head (and the output) stay float32
            (self.model.crossmat if self.fast else self.model).to(torch.bfloat16)
        elif precision == "int8":
            self._quantize_int8()

    def _quantize_int8(self) -> None:
        """Dynamic int8 quantisation (torch.ao) of the transformer layers' ``nn.Linear`` (the head stays float32).

        torch marks ``torch.ao.quantization`` as deprecated; if a future torch drops it, this raises a
        clear error and float32/bfloat16 keep working.
        """
        base = getattr(self.model, "crossmat", None)
        if base is None or not hasattr(self.model, "head"):
            raise ValueError("precision 'int8' needs a CrossMatForPropertyPrediction model")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation is flagged as deprecated
            try:
                from torch.ao.quantization import quantize_dynamic
            except ImportError:
                raise ValueError(
                    f"precision 'int8' needs torch.ao.quantization.quantize_dynamic, which torch {torch.__version__} "
                    "does not have; use float32 or bfloat16"
                ) from None
            for module in base.layers:
                quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)

    # -- columns ---------------------------------------------------------------------------------
    def output_columns(self) -> list[str]:
        """Names of the columns :meth:`predict` values map to (``predicted_<target>`` / ``probability_<label>``)."""
        if self.problem_type == "regression":
            return [f"predicted_{n}" for n in self.target_names]
        return [f"probability_{lab}" for lab in self.labels]

    # -- validation and tokenisation --------------------------------------------------------------
    def _prepare(self, formula: object, row: int) -> str | tuple[None, str]:
        if isinstance(formula, str) and len(formula.strip()) > self.max_chars:  # as the grammar counts
            return None, f"{len(formula.strip())} characters long; the limit is {self.max_chars}"
        try:
            return self.tokenizer.prepare_formula(formula)
        except ValueError as err:
            return None, str(getattr(err, "reason", err))

    def encode(self, formulas: Sequence[object]) -> tuple[list[list[int]], list[str | None]]:
        """Token ids per formula (empty list for invalid rows) and the error per row."""
        prepared = [self._prepare(f, i) for i, f in enumerate(formulas)]
        errors: list[str | None] = [p[1] if isinstance(p, tuple) else None for p in prepared]
        good = [i for i, e in enumerate(errors) if e is None]
        ids: list[list[int]] = [[] for _ in formulas]
        unk = self.tokenizer.unk_token_id
        for start in range(0, len(good), 8192):  # slices: the Rust Encoding objects are large
            rows = good[start : start + 8192]
            encodings = self.tokenizer.backend_tokenizer.encode_batch([prepared[i] for i in rows])
            for i, enc in zip(rows, encodings, strict=True):
                seq = enc.ids
                if len(seq) > self.max_tokens:
                    errors[i] = f"{len(seq)} tokens; the model reads at most {self.max_tokens}"
                elif unk in seq:
                    errors[i] = "contains symbols the tokenizer does not know"
                else:
                    ids[i] = seq
        return ids, errors

    # -- model ----------------------------------------------------------------------------------
    def _fast_path_available(self) -> bool:
        m = self.model
        base = getattr(m, "crossmat", None)
        needed = ("embeddings", "layers", "final_norm", "pool")
        return base is not None and all(hasattr(base, n) for n in needed) and hasattr(m, "head")

    def _fast_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's logits computed on attended tokens only (see module docstring)."""
        model = self.model
        base = model.crossmat
        cfg = base.config
        slot, frac = decode_composition(input_ids, cfg)
        slot = slot & attention_mask.bool()
        keys = slot | (input_ids == cfg.cls_token_id)
        keys[:, 0] = True
        n = keys.sum(1)
        k = int(n.max())
        order = torch.argsort((~keys).to(torch.int8), dim=1, stable=True)[:, :k]
        ids_c, slot_c, frac_c = input_ids.gather(1, order), slot.gather(1, order), frac.gather(1, order)
        mask_c = (torch.arange(k, device=input_ids.device)[None] < n[:, None]).long()
        hidden = base.embeddings(ids_c, slot_c, frac_c)
        mask = create_bidirectional_mask(config=cfg, inputs_embeds=hidden, attention_mask=mask_c)
        for layer in base.layers:
            hidden, _ = layer(hidden, mask)
        hidden = base.final_norm(hidden)
        pooled = base.pool(hidden, slot_c, frac_c)
        raw = model.head(pooled.to(model.head[-1].weight.dtype))
        if self.problem_type == "regression":
            mean, std = model._target_stats(raw)
            return raw * std + mean
        return raw

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._fast_logits(input_ids, attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _self_check(self) -> bool:
        ids, errors = self.encode(_SELF_CHECK)
        ids_t, mask_t = self._pad([s for s in ids if s])
        with torch.inference_mode():
            ref = self.model(input_ids=ids_t, attention_mask=mask_t).logits.float()
            fast = self._fast_logits(ids_t, mask_t).float()
        tol = 1e-4 * (1.0 + ref.abs().max().item())
        if not torch.allclose(ref, fast, atol=tol, rtol=0.0):
            warnings.warn(
                "FormulaPredictor: the fast path disagrees with the model's forward "
                f"(max diff {(ref - fast).abs().max().item():.3g}); using the plain forward",
                stacklevel=3,
            )
            return False
        return True

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        width = int(lengths.max())
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids = np.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=np.int64)
        ids[mask] = flat
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask.astype(np.int64)).to(self.device)

    def _postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.problem_type == "regression":
            return logits
        if self.problem_type == "multi_label_classification":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)

    @torch.inference_mode()
    def predict(self, formulas: Sequence[object]) -> Predictions:
        """Predict every valid formula (sorted by length into batches); invalid rows get NaN + reason."""
        ids, errors = self.encode(formulas)
        n_out = len(self.output_columns())
        values = np.full((len(formulas), n_out), np.nan, dtype=np.float64)
        good = np.array([i for i, e in enumerate(errors) if e is None], dtype=np.int64)
        if good.size:
            lengths = np.fromiter((len(ids[i]) for i in good), dtype=np.int64, count=good.size)
            good = good[np.argsort(lengths, kind="stable")]
            for start in range(0, good.size, self.batch_size):
                rows = good[start : start + self.batch_size]
                input_ids, mask = self._pad([ids[i] for i in rows])
                values[rows] = self._postprocess(self._logits(input_ids, mask)).cpu().double().numpy()
        return Predictions(values=values, errors=errors)

    def predict_one(self, formula: object) -> dict[str, Any]:
        """One formula as a dict (``error`` on invalid input) — used by the app."""
        pred = self.predict([formula])
        if pred.errors[0] is not None:
            return {"formula": formula, "error": pred.errors[0]}
        vals = pred.values[0].tolist()
        if self.problem_type == "regression":
            return {
                "formula": formula,
                "canonical": self.tokenizer.prepare_formula(formula),
                "predictions": [
                    {"property": n, "value": v, "unit": u}
                    for n, v, u in zip(self.target_names, vals, self.target_units, strict=False)
                ],
            }
        best = int(np.argmax(vals))
        return {
            "formula": formula,
            "canonical": self.tokenizer.prepare_formula(formula),
            "label": self.labels[best],
            "probability": vals[best],
            "probabilities": dict(zip(self.labels, vals, strict=True)),
        }
