"""Gradio app: type a formula, get the property prediction and an explanation of it.

Explanations come from the ``interpretability`` package (integrated gradients + Shapley interactions)
when it is installed; otherwise from an occlusion attribution computed here (each element replaced
by ``[MASK]`` with its fraction kept). Invalid input is shown as a message, never as a traceback.

Every request is bounded: input longer than :data:`MAX_INPUT_CHARS` (the grammar's 512) is refused, Shapley interactions are
computed for at most :data:`MAX_INTERACTION_ELEMENTS` distinct elements (larger formulas get the linear-cost
occlusion attribution), an explanation taking longer than :data:`EXPLAIN_TIMEOUT_S` is abandoned with a
message (and further explanations wait until it finishes, so at most one runs at a time), and the Gradio
queue is bounded (:data:`QUEUE_SIZE`, :data:`CONCURRENCY`). User text is Markdown-escaped before it is shown,
and the page never shows where the model lives on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import re
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import torch

from crossmat._extras import MissingExtraError, needs_extra
from crossmat.tokenization import MAX_FORMULA_CHARS

from .engine import FormulaPredictor

__all__ = ["build_app", "explain_markdown", "md_escape", "model_label", "predict_markdown", "respond"]

log = logging.getLogger("crossmat.app")
EXAMPLES = ["Fe2O3", "LiCoO2", "SrTiO3", "(NH4)2SO4", "CuSO4·5H2O", "Li0.5Co0.5O2"]
MAX_INPUT_CHARS = MAX_FORMULA_CHARS  # the grammar's limit (every entry point agrees); longer input is refused early
MAX_INTERACTION_ELEMENTS = 10  # Shapley interactions need 2**n coalitions; beyond this: occlusion (n + 1 passes)
EXPLAIN_TIMEOUT_S = 30.0
QUEUE_SIZE = 32  # waiting requests beyond this are refused by Gradio
CONCURRENCY = 2  # requests processed at once
_MD_SPECIAL = re.compile(r"([\\`*{}\[\]()<>#+\-.!|~&]|(?<!\w)_|_(?!\w))")  # intraword _ is literal (CommonMark)


def md_escape(text: object, limit: int = 80) -> str:
    """``text`` shortened to ``limit`` characters, control characters shown as ``?``, every Markdown/HTML
    special character backslash-escaped: shown literally, never rendered (no code spans, links, images)."""
    s = str(text)
    s = s if len(s) <= limit else s[: limit - 3] + "..."
    s = "".join(c if c.isprintable() else "?" for c in s)
    return _MD_SPECIAL.sub(r"\\\1", s)


def model_label(predictor: FormulaPredictor) -> str:
    """How the page names the model: a Hub id as is, a local folder only as "a local model" (no path)."""
    path = predictor.model_path
    if Path(path).exists() or path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") != 1:
        return "a local model"
    return md_escape(path)


def predict_markdown(predictor: FormulaPredictor, formula: str) -> tuple[str, bool]:
    """Markdown for the prediction and whether the formula was valid."""
    if len(formula.strip()) > MAX_INPUT_CHARS:  # counted as the grammar counts: surrounding whitespace stripped
        return (f"**Invalid formula** {md_escape(formula)}: {len(formula.strip())} characters (at most {MAX_INPUT_CHARS})",
                False)
    out = predictor.predict_one(formula)
    if "error" in out:
        return f"**Invalid formula** {md_escape(formula)}: {md_escape(out['error'], 300)}", False
    lines = [f"**{md_escape(out['formula'])}** (read as {md_escape(out['canonical'], MAX_INPUT_CHARS)})", ""]
    if "predictions" in out:
        for p in out["predictions"]:
            unit = f" {md_escape(p['unit'])}" if p["unit"] else ""
            std = f" ± {p['std']:.2g}{unit} (1 σ, calibrated on held-out rows)" if p.get("std") is not None else ""
            if p.get("interval_95"):
                low, high = p["interval_95"]
                std += f"; 95% interval {low:.4g} to {high:.4g}{unit}"
            lines.append(f"- {md_escape(p['property'])}: **{p['value']:.4g}{unit}**{std}")
    else:
        lines.append(f"- predicted: **{md_escape(out['label'])}** (probability {out['probability']:.3f})")
        lines += [f"  - {md_escape(k)}: {v:.3f}" for k, v in out["probabilities"].items()]
    return "\n".join(lines), True


def _occlusion(predictor: FormulaPredictor, formula: str) -> str:
    """Per-element effect of replacing the element by [MASK] (fraction kept), in output units."""
    tok, model = predictor.tokenizer, predictor.model
    ids = tok([formula], return_tensors="pt")["input_ids"][0]
    cfg = model.config
    pos = [
        i
        for i, t in enumerate(ids.tolist())
        if cfg.element_token_start <= t < cfg.element_token_start + cfg.num_elements
    ]
    batch = ids.repeat(len(pos) + 1, 1)
    for row, p in enumerate(pos, start=1):
        batch[row, p] = cfg.mask_token_id
    with torch.inference_mode():
        out = predictor._postprocess(model(input_ids=batch.to(predictor.device)).logits)[:, 0].double().cpu()
    unit = predictor.target_units[0] if predictor.problem_type == "regression" and predictor.target_units else ""
    lines = [
        "Occlusion attribution (prediction minus prediction with the element replaced by `[MASK]`, fraction kept):",
        "",
        f"| element | effect{f' [{md_escape(unit)}]' if unit else ''} |",
        "|---|---:|",
    ]
    for row, p in enumerate(pos, start=1):
        lines.append(f"| {tok.convert_ids_to_tokens(int(ids[p]))} | {float(out[0] - out[row]):+.4g} |")
    return "\n".join(lines)


def _n_elements(predictor: FormulaPredictor, formula: str) -> int:
    cfg = predictor.model.config
    ids = predictor.tokenizer([formula])["input_ids"][0]
    return len({t for t in ids if cfg.element_token_start <= t < cfg.element_token_start + cfg.num_elements})


def explain_markdown(predictor: FormulaPredictor, formula: str) -> str:
    """Markdown explanation of a valid formula (interactions up to :data:`MAX_INTERACTION_ELEMENTS` elements)."""
    try:
        interp = importlib.import_module("crossmat.interpretability")
    except ImportError:
        interp = None
    n = _n_elements(predictor, formula)
    if n > MAX_INTERACTION_ELEMENTS:
        return (f"_{n} distinct elements: Shapley interactions are computed for at most {MAX_INTERACTION_ELEMENTS} "
                "in this app (use the `interpretability` command line for more)._\n\n" + _occlusion(predictor, formula))
    if interp is not None and hasattr(interp, "explain") and hasattr(interp, "format_table"):
        ((attr, inter),) = interp.explain(predictor.model, predictor.tokenizer, [formula])
        # the table quotes the formula in a code span: show the (generated, element-symbols-only) canonical form
        return interp.format_table(dataclasses.replace(attr, formula=attr.canonical), inter)
    return _occlusion(predictor, formula)


class _BoundedExplainer:
    """Runs explanations one at a time in a worker thread with a timeout. A timed-out explanation cannot be
    killed; it finishes in the background and new explanations are refused until then."""

    def __init__(self, predictor: FormulaPredictor, timeout_s: float) -> None:
        self.predictor, self.timeout_s = predictor, timeout_s
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossmat-explain")
        self.idle = threading.Semaphore(1)

    def __call__(self, formula: str) -> str:
        if not self.idle.acquire(blocking=False):
            return "_The explainer is busy with an earlier request; try again in a moment._"
        future = self.pool.submit(explain_markdown, self.predictor, formula)
        future.add_done_callback(lambda _: self.idle.release())
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            log.warning("explanation of %r took longer than %.0f s", formula[:80], self.timeout_s)
            return f"_The explanation took longer than {self.timeout_s:.0f} s and was abandoned._"


def respond(predictor: FormulaPredictor, formula: object, explainer: Any = None) -> tuple[str, str]:
    """The app's request handler: (prediction Markdown, explanation Markdown); errors become messages."""
    formula = formula if isinstance(formula, str) else ""
    try:
        text, ok = predict_markdown(predictor, formula)
        if not ok or explainer is None:
            return text, ""
        return text, explainer(formula)
    except Exception as err:  # never show a traceback in the page; log it for the operator
        log.error("prediction failed for %r:\n%s", formula[:200], traceback.format_exc())
        return f"**Error**: {type(err).__name__}: {md_escape(err, 300)}", ""


def build_app(model: str | Path | FormulaPredictor, *, explain: bool = True) -> Any:
    """The Gradio Blocks app for one model (folder or Hub id)."""
    with needs_extra("app", "crossmat app"):
        import gradio as gr

    predictor = model if isinstance(model, FormulaPredictor) else FormulaPredictor(model)
    cfg = predictor.model.config
    what = (
        ", ".join(
            f"{n} ({u})" if u else n for n, u in zip(predictor.target_names, predictor.target_units, strict=False)
        )
        if predictor.problem_type == "regression"
        else " / ".join(predictor.labels)
    )

    explainer = _BoundedExplainer(predictor, EXPLAIN_TIMEOUT_S) if explain else None

    def run(formula: str) -> tuple[str, str]:
        return respond(predictor, formula, explainer)

    with gr.Blocks(title="CrossMat property prediction") as demo:
        gr.Markdown(
            f"# CrossMat: {md_escape(what, 300)} from the chemical formula\n"
            f"Model: {model_label(predictor)} ({cfg.hidden_size} hidden, {cfg.num_hidden_layers} layers). "
            "Type a formula such as `Fe2O3`, `(NH4)2SO4` or `Li0.5Co0.5O2`."
        )
        with gr.Row():
            formula = gr.Textbox(label="Formula", placeholder="Fe2O3", elem_id="formula", max_lines=1,
                                 max_length=MAX_INPUT_CHARS)
            button = gr.Button("Predict", variant="primary", elem_id="predict")
        result = gr.Markdown(elem_id="result")
        explanation = gr.Markdown(elem_id="explanation")
        gr.Examples(EXAMPLES, inputs=formula)
        button.click(run, inputs=formula, outputs=[result, explanation], api_name="predict",
                     concurrency_limit=CONCURRENCY, concurrency_id="predict")
        formula.submit(run, inputs=formula, outputs=[result, explanation], concurrency_limit=CONCURRENCY,
                       concurrency_id="predict")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gradio app for a CrossMat property model")
    parser.add_argument("--model", default=os.environ.get("CROSSMAT_MODEL"), help="model folder or Hub id")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--no-explain", action="store_true", help="predictions only (no explanation panel)")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model: pass --model DIR_OR_HUB_ID or set CROSSMAT_MODEL")
    try:
        demo = build_app(args.model, explain=not args.no_explain)
    except (OSError, ValueError) as err:
        print(f"app.py: error: {err}", file=sys.stderr)
        return 2
    except MissingExtraError as err:  # no gradio: name the extra instead of a traceback
        print(f"app.py: error: {err}", file=sys.stderr)
        return 1
    demo.launch(server_name=args.host, server_port=args.port, show_error=False)  # queue bounded by build_app
    return 0
