"""One-call explanations written to disk (JSON, CSV, PNG/SVG) and the model-card section."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .attributions import AttributionResult, explain_attributions
from .interactions import InteractionResult, explain_interactions
from .model_output import ModelOutputSpec
from .plots import plot_explanation

__all__ = ["card_section", "explain", "format_table"]


def _slug(i: int, text: str) -> str:
    return f"{i:03d}_{re.sub(r'[^A-Za-z0-9.]+', '_', text)[:60]}"


def explain(
    model,
    tokenizer,
    formulas: str | Sequence[str],
    out_dir: str | Path | None = None,
    *,
    index: str = "k-SII",
    order: int = 2,
    strategy: str = "mask",
    method: str = "auto",
    max_exact_players: int = 12,
    budget: int | None = None,
    approximator: str | None = None,
    baseline: str = "mask",
    n_steps: int = 64,
    output: ModelOutputSpec | None = None,
    formats: Sequence[str] = ("png",),
) -> list[tuple[AttributionResult, InteractionResult]]:
    """Integrated-gradients attributions and Shapley interactions for each formula.

    With ``out_dir``: ``explanations.json`` (everything), ``attributions.csv``, ``interactions.csv`` and
    one figure per formula and format (``NNN_<formula>.png``/``.svg``).
    """
    formulas = [formulas] if isinstance(formulas, str) else list(formulas)
    attr = explain_attributions(model, tokenizer, formulas, output=output, baseline=baseline, n_steps=n_steps)
    inter = explain_interactions(
        model, tokenizer, formulas, index=index, order=order, strategy=strategy, method=method,
        max_exact_players=max_exact_players, budget=budget, approximator=approximator, output=output,
    )
    pairs = list(zip(attr, inter, strict=True))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "explanations.json").write_text(
            json.dumps([{"attributions": a.to_dict(), "interactions": s.to_dict()} for a, s in pairs], indent=2)
        )
        pd.DataFrame(
            [{"formula": a.formula, **row, "prediction": a.prediction, "baseline_prediction": a.baseline_prediction}
             for a in attr for row in a.table()]
        ).to_csv(out / "attributions.csv", index=False)
        pd.DataFrame([row for s in inter for row in s.table()]).to_csv(out / "interactions.csv", index=False)
        for i, (a, s) in enumerate(pairs):
            for fmt in formats:
                plot_explanation(s, a, out / f"{_slug(i, a.canonical)}.{fmt}")
    return pairs


def format_table(attr: AttributionResult, inter: InteractionResult, top_pairs: int = 5) -> str:
    """Markdown tables of one explanation (per-element values, then the strongest pairs)."""
    unit = f" [{attr.unit}]" if attr.unit else ""
    first = {r["elements"][0]: r["value"] for r in inter.of_order(1)}
    lines = [
        f"`{attr.formula}` (canonical `{attr.canonical}`): {attr.output_name} = **{attr.prediction:.4g}**{unit}; "
        f"all elements [MASK]ed{' in the network' if attr.held_fixed else ''}: {attr.baseline_prediction:.4g}; "
        f"{inter.strategy} empty coalition: {inter.baseline_value:.4g}.",
        "",
        f"| element | fraction | integrated gradients{unit} | {inter.index} order 1 ({inter.strategy}){unit} |",
        "|---|---:|---:|---:|",
    ]
    for row in attr.table():
        lines.append(
            f"| {row['element']} | {row['fraction']:.4g} | {row['attribution']:+.4g} | {first.get(row['element'], 0.0):+.4g} |"
        )
    pairs = inter.of_order(2)[:top_pairs]
    if pairs:
        lines += ["", f"| element pair | {inter.index} interaction{unit} |", "|---|---:|"]
        lines += [f"| {' x '.join(r['elements'])} | {r['value']:+.4g} |" for r in pairs]
    lines += ["", f"_{inter.note}; integrated gradients: {attr.n_steps} steps, completeness gap {attr.delta:+.2g}._"]
    if attr.held_fixed:  # a forest blend: integrated gradients see CrossMat's network only
        lines += ["", f"_Integrated gradients hold {attr.held_fixed} at this formula's value: they attribute the "
                      f"network's share of the output only. The {inter.index} values mask the formula for the whole "
                      "model._"]
    return "\n".join(lines)


def card_section(model, tokenizer, formula: str, *, strategy: str = "mask", index: str = "k-SII") -> str:
    """Markdown section for a model card: an example explanation of ``formula`` computed with ``model``."""
    (attr, inter), = explain(model, tokenizer, [formula], index=index, strategy=strategy)
    return "\n".join(
        [
            "## Interpretability",
            "",
            "Example explanation (computed with this model by `crossmat`'s `interpretability` package). "
            "Integrated gradients attribute the prediction to each element relative to the same formula with "
            "every element replaced by `[MASK]` (fractions kept); the Shapley interaction index "
            f"{inter.index} treats each element with its amount as a player and shows which elements act "
            "together (positive: the pair raises the output beyond their separate effects).",
            "",
            format_table(attr, inter),
            "",
            "Reproduce or explain your own formulas:",
            "",
            "```bash",
            f'python -m crossmat.interpretability explain --model <this model folder> --formula "{formula}" --output-dir explanation/',
            "```",
            "",
        ]
    )
