"""Gradio app: type a formula, get the property prediction and an explanation of it.

Explanations come from the ``interpretability`` package (integrated gradients + Shapley interactions)
when it is installed; otherwise from an occlusion attribution computed here (each element replaced
by ``[MASK]`` with its fraction kept). Invalid input is shown as a message, never as a traceback.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from pathlib import Path
from typing import Any

import torch

from .engine import FormulaPredictor

__all__ = ["build_app", "explain_markdown", "predict_markdown"]

log = logging.getLogger("crossmat.app")
EXAMPLES = ["Fe2O3", "LiCoO2", "SrTiO3", "(NH4)2SO4", "CuSO4·5H2O", "Li0.5Co0.5O2"]


def predict_markdown(predictor: FormulaPredictor, formula: str) -> tuple[str, bool]:
    """Markdown for the prediction and whether the formula was valid."""
    out = predictor.predict_one(formula)
    if "error" in out:
        shown = formula if len(formula) <= 80 else formula[:77] + "..."
        return f"**Invalid formula** `{shown}`: {out['error']}", False
    lines = [f"**{out['formula']}** (read as `{out['canonical']}`)", ""]
    if "predictions" in out:
        for p in out["predictions"]:
            unit = f" {p['unit']}" if p["unit"] else ""
            lines.append(f"- {p['property']}: **{p['value']:.4g}{unit}**")
    else:
        lines.append(f"- predicted: **{out['label']}** (probability {out['probability']:.3f})")
        lines += [f"  - {k}: {v:.3f}" for k, v in out["probabilities"].items()]
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
        f"| element | effect{f' [{unit}]' if unit else ''} |",
        "|---|---:|",
    ]
    for row, p in enumerate(pos, start=1):
        lines.append(f"| {tok.convert_ids_to_tokens(int(ids[p]))} | {float(out[0] - out[row]):+.4g} |")
    return "\n".join(lines)


def explain_markdown(predictor: FormulaPredictor, formula: str) -> str:
    """Markdown explanation of a valid formula."""
    try:
        interp = importlib.import_module("interpretability")
    except ImportError:
        interp = None
    if interp is not None and hasattr(interp, "explain") and hasattr(interp, "format_table"):
        ((attr, inter),) = interp.explain(predictor.model, predictor.tokenizer, [formula])
        return interp.format_table(attr, inter)
    return _occlusion(predictor, formula)


def build_app(model: str | Path | FormulaPredictor, *, explain: bool = True) -> Any:
    """The Gradio Blocks app for one model (folder or Hub id)."""
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

    def run(formula: str) -> tuple[str, str]:
        formula = formula or ""
        try:
            text, ok = predict_markdown(predictor, formula)
            if not ok:
                return text, ""
            return text, (explain_markdown(predictor, formula) if explain else "")
        except Exception as err:  # never show a traceback in the page; log it for the operator
            log.error("prediction failed for %r:\n%s", formula[:200], traceback.format_exc())
            return f"**Error**: {type(err).__name__}: {str(err)[:300]}", ""

    with gr.Blocks(title="CrossMat property prediction") as demo:
        gr.Markdown(
            f"# CrossMat: {what} from the chemical formula\n"
            f"Model: `{predictor.model_path}` ({cfg.hidden_size} hidden, {cfg.num_hidden_layers} layers). "
            "Type a formula such as `Fe2O3`, `(NH4)2SO4` or `Li0.5Co0.5O2`."
        )
        with gr.Row():
            formula = gr.Textbox(label="Formula", placeholder="Fe2O3", elem_id="formula", max_lines=1)
            button = gr.Button("Predict", variant="primary", elem_id="predict")
        result = gr.Markdown(elem_id="result")
        explanation = gr.Markdown(elem_id="explanation")
        gr.Examples(EXAMPLES, inputs=formula)
        button.click(run, inputs=formula, outputs=[result, explanation], api_name="predict")
        formula.submit(run, inputs=formula, outputs=[result, explanation])
    return demo
