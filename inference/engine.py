"""Batched prediction for CrossMat property models: validate, tokenise, sort by length, predict.

:class:`FormulaPredictor` is what the batch CLI, the app and the evaluation harness use. It loads any
CrossMat property folder (full or LoRA, see :mod:`modeling.model_folder`) and calls the model's own
``forward``; what the outputs mean (problem type, labels, units) comes from
:func:`modeling.model_folder.output_info`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossmat.dataset_builders.tables import TableError, table_format
from crossmat.modeling.configuration_crossmat import INTERVAL_NAMES, INTERVAL_TAGS, prediction_intervals
from crossmat.modeling.model_folder import is_property_config, load_property_model, output_info, scores_from_logits
from crossmat.modeling.pipeline_crossmat import DEFAULT_MAX_CHARS, label_indices

__all__ = ["DEFAULT_MAX_CHARS", "PRECISIONS", "FormulaPredictor", "Predictions"]

PRECISIONS = ("float32", "bfloat16", "int8")


@dataclass
class Predictions:
    """Outputs for a batch of formulas, in input order.

    ``values``: ``(n, num_labels)`` float64 — physical units for regression, class probabilities for
    classification; rows with an error are NaN. ``errors``: ``None`` or the reason per row.
    ``uncertainty``: same shape as ``values`` when the model reports one (``output.uncertainty``), else ``None``.
    """

    values: np.ndarray
    errors: list[str | None]
    uncertainty: np.ndarray | None = None

    @property
    def n_invalid(self) -> int:
        return sum(e is not None for e in self.errors)


def _is_table_file(text: str) -> bool:
    """Whether ``text`` names an existing file of a table format the readers know (``tables.table_format``)."""
    try:
        table_format(text)
    except TableError:
        return False
    return Path(text).is_file()


def formula_list(formulas: object) -> list[object]:
    """The rows of a ``predict`` call: a single string is one formula; any iterable of cells (list, tuple, numpy
    array, pandas Series, generator) is one row per cell. A table or a file name is refused with what to pass."""
    if isinstance(formulas, Path) or (isinstance(formulas, str) and _is_table_file(formulas)):
        raise ValueError(f"{formulas} is a file, not a formula: predict a file with crossmat predict --model ... "
                         f"--input {formulas} --output predictions.csv, or crossmat.inference.predict_file")
    if isinstance(formulas, str):
        return [formulas]
    if hasattr(formulas, "columns"):  # a DataFrame iterates over its column names
        raise TypeError(f"got a table with columns {list(formulas.columns)}; pass its formula column "
                        "(e.g. df['formula']) or a list of formulas")
    if isinstance(formulas, dict):
        raise TypeError("got a dict; pass a list of formulas")
    try:
        return list(formulas)
    except TypeError:
        raise TypeError(f"formulas must be a string or a list of strings, got {type(formulas).__name__}") from None


class FormulaPredictor:
    """Load a CrossMat property model (folder or Hub id) and predict batches of formulas."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str | None = None,
        batch_size: int = 2048,
        max_chars: int = DEFAULT_MAX_CHARS,
        precision: str = "float32",
    ) -> None:
        device_ = torch.device(device or "cpu")
        loaded, tokenizer = load_property_model(str(model), device_)
        self._setup(str(model), loaded, tokenizer, device_, batch_size, max_chars, precision)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name: str = "<in-memory model>",
        device: str | None = None,
        batch_size: int = 2048,
        max_chars: int = DEFAULT_MAX_CHARS,
        precision: str = "float32",
    ) -> FormulaPredictor:
        """A predictor for a property model already in memory (e.g. one just trained, as
        ``load_property_model`` would load it from its folder): moved to ``device`` (CPU by default) and put in
        eval mode in place; ``bfloat16`` / ``int8`` change it in place too. ``name`` appears in messages."""
        if not is_property_config(model.config):
            raise ValueError(f"{name}: not a property model (architectures {getattr(model.config, 'architectures', None)})")
        self = cls.__new__(cls)
        device_ = torch.device(device or "cpu")
        self._setup(name, model.to(device_).eval(), tokenizer, device_, batch_size, max_chars, precision)
        return self

    def _setup(self, name: str, model: torch.nn.Module, tokenizer: Any, device: torch.device, batch_size: int,
               max_chars: int, precision: str) -> None:
        self.model_path = name
        self.device = device
        self.model, self.tokenizer = model, tokenizer
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError("precision 'int8' (dynamic quantisation) runs on the CPU only")
        self.batch_size = int(batch_size)
        self.max_chars = int(max_chars)
        self.max_tokens = int(min(self.tokenizer.model_max_length or 256, 10**6))
        info = output_info(self.model.config)
        self.problem_type: str = info["problem_type"]
        self.labels: list[str] = info["labels"]
        self.target_names: list[str] = info["names"] if self.problem_type == "regression" else []
        self.target_units: list[str] = info["units"]
        self.decision_threshold: float | None = getattr(self.model.config, "decision_threshold", None)
        self.calibrated = bool(getattr(self.model.config, "uncertainty_rows", 0))  # a std per regression value
        if precision == "bfloat16":  # the encoder in bfloat16; the head (and the output) stay float32
            self.model.crossmat.to(torch.bfloat16)
            head_dtype = next(self.model.head.parameters()).dtype
            self.model.head.register_forward_pre_hook(lambda _m, args: tuple(a.to(head_dtype) for a in args))
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

    def uncertainty_columns(self) -> list[str]:
        """Names of the standard-deviation columns (``std_<target>``), one per regression output."""
        return [f"std_{n}" for n in self.target_names] if self.problem_type == "regression" else []

    def interval_column_names(self) -> list[str]:
        """Names of the prediction-interval columns (see :meth:`interval_columns`); ``[]`` without intervals."""
        if not self.has_intervals:
            return []
        return [f"{side}{tag}_{t}" for tag in INTERVAL_TAGS for t in self.target_names for side in ("low", "high")]

    def interval_columns(self, pred: Predictions) -> dict[str, np.ndarray]:
        """The prediction intervals of a calibrated regression model as columns: ``low68_<target>``,
        ``high68_<target>``, ``low95_<target>``, ``high95_<target>`` (68.27% / 95.45%, conformal on the held-out
        rows; NaN where no prediction); ``{}`` for a model without intervals."""
        out: dict[str, np.ndarray] = {}
        bounds = prediction_intervals(self.model.config, pred.values, pred.uncertainty)
        for tag, name in zip(INTERVAL_TAGS, INTERVAL_NAMES, strict=True):
            if name not in bounds:
                continue
            low, high = bounds[name]
            for j, target in enumerate(self.target_names):
                out[f"low{tag}_{target}"], out[f"high{tag}_{target}"] = low[:, j], high[:, j]
        return out

    @property
    def has_intervals(self) -> bool:
        """Whether predictions carry the 68.27% / 95.45% prediction intervals (a calibrated regression model)."""
        return (self.problem_type == "regression" and self.calibrated
                and bool(getattr(self.model.config, "uncertainty_interval_multipliers", None)))

    def labels_of(self, values: np.ndarray) -> np.ndarray:
        """Predicted class index per row of class probabilities (the model's decision threshold for a binary
        classifier, its class decision weights for one of three classes or more, else the most probable class); rows
        with NaN get -1."""
        bad = ~np.isfinite(values).all(axis=1)
        idx = label_indices(torch.from_numpy(np.nan_to_num(values, nan=-1.0)), self.decision_threshold,
                            getattr(self.model.config, "class_decision_weights", None)).numpy()
        idx[bad] = -1
        return idx

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
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (see :func:`scores_from_logits`) and the model's uncertainty, when it reports one."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        uncertainty = getattr(out, "uncertainty", None)
        return self._postprocess(out.logits), (None if uncertainty is None else uncertainty.float())

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        width = int(lengths.max())
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids = np.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=np.int64)
        ids[mask] = flat
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask.astype(np.int64)).to(self.device)

    def _postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        return scores_from_logits(logits, self.problem_type)

    @torch.inference_mode()
    def predict(self, formulas: Sequence[object] | str) -> Predictions:
        """Predict every valid formula (sorted by length into batches); invalid rows get NaN + reason. A single
        string is one formula (one row), not a sequence of one-character formulas."""
        formulas = formula_list(formulas)
        ids, errors = self.encode(formulas)
        n_out = len(self.output_columns())
        values = np.full((len(formulas), n_out), np.nan, dtype=np.float64)
        uncertainty: np.ndarray | None = None
        good = np.array([i for i, e in enumerate(errors) if e is None], dtype=np.int64)
        if good.size:
            lengths = np.fromiter((len(ids[i]) for i in good), dtype=np.int64, count=good.size)
            good = good[np.argsort(lengths, kind="stable")]
            for start in range(0, good.size, self.batch_size):
                rows = good[start : start + self.batch_size]
                input_ids, mask = self._pad([ids[i] for i in rows])
                scores, unc = self._forward(input_ids, mask)
                values[rows] = scores.cpu().double().numpy()
                if unc is not None:
                    if uncertainty is None:
                        uncertainty = np.full((len(formulas), unc.shape[-1]), np.nan, dtype=np.float64)
                    uncertainty[rows] = unc.cpu().double().numpy().reshape(len(rows), -1)
        return Predictions(values=values, errors=errors, uncertainty=uncertainty)

    def predict_one(self, formula: object) -> dict[str, Any]:
        """One formula as a dict (``error`` on invalid input) — used by the app."""
        pred = self.predict([formula])
        if pred.errors[0] is not None:
            return {"formula": formula, "error": pred.errors[0]}
        vals = pred.values[0].tolist()
        if self.problem_type == "regression":
            stds = [None] * len(vals) if pred.uncertainty is None else pred.uncertainty[0].tolist()
            rows = [{"property": n, "value": v, "unit": u, "std": s}
                    for n, v, u, s in zip(self.target_names, vals, self.target_units, stds, strict=False)]
            for name, (low, high) in prediction_intervals(self.model.config, pred.values, pred.uncertainty).items():
                for j, row in enumerate(rows):
                    row[name] = [float(low[0, j]), float(high[0, j])]
            return {"formula": formula, "canonical": self.tokenizer.prepare_formula(formula), "predictions": rows}
        best = int(self.labels_of(pred.values[:1])[0])
        return {
            "formula": formula,
            "canonical": self.tokenizer.prepare_formula(formula),
            "label": self.labels[best],
            "probability": vals[best],
            "probabilities": dict(zip(self.labels, vals, strict=True)),
        }
