"""First-order attributions: captum ``IntegratedGradients`` over the token embeddings (``inputs_embeds``).

Baseline (documented choice): the same formula with every element token replaced by ``[MASK]``; the
amount digits stay, so the model keeps the molar fractions and only the element identities are
integrated from "unknown" to the real elements. Attributions are summed over the embedding
dimensions and reported per element (digits, ``[CLS]`` and ``[SEP]`` are identical in input and
baseline, so they receive exactly zero). By completeness of integrated gradients the per-element
attributions sum to ``prediction - baseline_prediction`` in the units of the explained output; the
remaining gap is returned as ``delta`` and checked against ``tolerance``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients

from crossmat.modeling.model_folder import problem_type_of
from crossmat.tokenization.vocabulary import ELEMENT_START, MASK_ID, NUM_ELEMENTS, PAD_ID

from .model_output import ModelOutputSpec, select_output
from .players import FormulaPlayers, formula_players_batch

__all__ = ["AttributionResult", "BASELINES", "explain_attributions"]

BASELINES = ("mask", "pad")


@dataclass
class AttributionResult:
    """Per-element integrated-gradients attributions of one formula."""

    formula: str
    canonical: str
    elements: list[str]
    fractions: list[float]
    attributions: list[float]
    prediction: float
    baseline_prediction: float
    delta: float  # sum(attributions) - (prediction - baseline_prediction)
    output_name: str
    unit: str
    baseline: str
    n_steps: int
    held_fixed: str = ""  # parts of the model that read the real formula, not the embeddings (IG cannot move them)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> list[dict]:
        """Rows ``{element, fraction, attribution}`` sorted by ``|attribution|``."""
        rows = [
            {"element": e, "fraction": f, "attribution": a}
            for e, f, a in zip(self.elements, self.fractions, self.attributions, strict=True)
        ]
        return sorted(rows, key=lambda r: -abs(r["attribution"]))


def _pad(players: Sequence[FormulaPlayers]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p.input_ids) for p in players)
    ids = torch.full((len(players), width), PAD_ID, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, p in enumerate(players):
        ids[i, : len(p.input_ids)] = torch.as_tensor(p.input_ids)
        att[i, : len(p.input_ids)] = 1
    return ids, att



def held_fixed_parts(model) -> str:
    """What of ``model`` integrated gradients hold at the formula's own value (they move the element embeddings only):
    a blended random forest and the head's element statistics read the real formula. Empty when nothing is held."""
    config = model.config
    parts = []
    if getattr(model, "forest", None) is not None and getattr(config, "forest_weight", 1.0) < 1.0:
        parts.append(f"the blended random forest (share {1.0 - config.forest_weight:.2g} of the output)")
    if getattr(config, "element_statistics_dim", 0):
        parts.append("the element statistics of the property head")
    return " and ".join(parts)

def explain_attributions(
    model,
    tokenizer,
    formulas: str | Sequence[str],
    *,
    output: ModelOutputSpec | None = None,
    baseline: str = "mask",
    n_steps: int = 64,
    batch_size: int = 32,
    tolerance: float = 1e-2,
    max_steps: int = 1024,
) -> list[AttributionResult]:
    """Integrated-gradients attributions per element for each formula (batched over formulas).

    ``baseline``: ``"mask"`` (element tokens -> ``[MASK]``) or ``"pad"`` (element embeddings -> the zero
    ``[PAD]`` embedding); in both the fractions are kept. Formulas whose completeness gap
    ``|delta| > tolerance * max(1, |prediction - baseline|)`` are recomputed with 4x more steps up to
    ``max_steps`` (the steps used are in ``n_steps`` of each result); a gap still too large warns.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if n_steps < 2:
        raise ValueError("n_steps must be >= 2")
    spec = output or ModelOutputSpec()
    kind, index, name, unit = spec.resolve(model)
    problem = problem_type_of(model.config)
    single = isinstance(formulas, str)
    formulas = [formulas] if single else list(formulas)
    players = formula_players_batch(formulas, tokenizer, rows=[None] if single else None)
    model.eval()
    device = next(model.parameters()).device
    # The vectors the model really uses (element features too): one embedding table per ensemble member. For an
    # ensemble every member's embeddings move along the path together, so the attributions (summed over members)
    # explain the ensemble's output and still add up to prediction - baseline.
    encoders = [enc for enc, _ in model.members()] if hasattr(model, "members") else [model.crossmat]
    emb_layers = [enc.embeddings.embed_tokens for enc in encoders]
    n_emb = len(emb_layers)
    repl = MASK_ID if baseline == "mask" else PAD_ID

    def forward(*args: torch.Tensor) -> torch.Tensor:
        # The composition (fractions, slots) is always decoded from the real ids; only embeddings vary.
        embeds, (input_ids, attention_mask) = args[:n_emb], args[n_emb:]
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       inputs_embeds=list(embeds) if n_emb > 1 else embeds[0]).logits
        return select_output(logits, kind, index, problem)

    ig = IntegratedGradients(forward)
    held = held_fixed_parts(model)

    def run(chunk: list[FormulaPlayers], steps: int) -> list[tuple[np.ndarray, float, float, float]]:
        ids, att = _pad(chunk)
        ids, att = ids.to(device), att.to(device)
        is_elem = (ids >= ELEMENT_START) & (ids < ELEMENT_START + NUM_ELEMENTS)
        base_ids = torch.where(is_elem, torch.full_like(ids, repl), ids)
        with torch.no_grad():
            embeds = tuple(layer(ids) for layer in emb_layers)
            base_embeds = tuple(layer(base_ids) for layer in emb_layers)
        attr = ig.attribute(
            embeds,
            baselines=base_embeds,
            additional_forward_args=(ids, att),
            n_steps=steps,
            internal_batch_size=min(max(len(chunk) * steps, 1), 4096),
        )
        per_token = sum(a.sum(-1) for a in attr).detach().cpu().double().numpy()
        with torch.no_grad():
            pred = forward(*embeds, ids, att).double().cpu().numpy()
            # Baseline embeddings with the real composition (identical to the [MASK] formula for "mask").
            base_pred = forward(*base_embeds, ids, att).double().cpu().numpy()
        out = []
        for i, p in enumerate(chunk):
            values = per_token[i, p.element_positions]
            out.append((values, float(pred[i]), float(base_pred[i]), float(values.sum() - (pred[i] - base_pred[i]))))
        return out

    def too_big(r: tuple[np.ndarray, float, float, float]) -> bool:
        return abs(r[3]) > tolerance * max(1.0, abs(r[1] - r[2]))

    results: list[AttributionResult] = []
    for start in range(0, len(players), batch_size):
        chunk = players[start : start + batch_size]
        found = run(chunk, n_steps)
        used = [n_steps] * len(chunk)
        steps = n_steps
        todo = [i for i, r in enumerate(found) if too_big(r)]
        while todo and steps < max_steps:  # refine only the formulas whose completeness gap is too large
            steps = min(steps * 4, max_steps)
            for i, r in zip(todo, run([chunk[i] for i in todo], steps), strict=True):
                found[i], used[i] = r, steps
            todo = [i for i in todo if too_big(found[i])]
        for i in todo:
            warnings.warn(
                f"{chunk[i].formula!r}: integrated-gradients completeness gap {found[i][3]:.3g} exceeds tolerance "
                f"even with {used[i]} steps",
                stacklevel=2,
            )
        for p, (values, pred, base, gap), st in zip(chunk, found, used, strict=True):
            results.append(
                AttributionResult(
                    formula=p.formula,
                    canonical=p.canonical,
                    elements=p.elements,
                    fractions=p.fractions,
                    attributions=[float(v) for v in values],
                    prediction=pred,
                    baseline_prediction=base,
                    delta=gap,
                    output_name=name,
                    unit=unit,
                    baseline=baseline,
                    n_steps=st,
                    held_fixed=held,
                )
            )
    return results
