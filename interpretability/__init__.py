"""Interpretability for CrossMat property models.

* :func:`explain_attributions`: captum integrated gradients per element (``[MASK]`` baseline), in the
  units of the explained output, with a completeness check.
* :func:`explain_interactions`: shapiq Shapley interactions (k-SII, STII, FSII, SII, SV) between a
  formula's elements, exact for small formulas and approximated with a budget for long ones;
  coalitions are formed by masking (``[MASK]``) or removing elements.
* :func:`explain`: both, written as JSON/CSV and PNG/SVG figures; :func:`aggregate_interactions`: the
  element pairs that interact most over a dataset; :func:`card_section`: a model-card section.

CLI: ``python -m crossmat.interpretability --help``.
"""

from crossmat._extras import needs_extra

with needs_extra("explain", "crossmat explain (crossmat.interpretability)"):
    from .aggregate import aggregate_interactions, summarise_pairs
    from .attributions import BASELINES, AttributionResult, explain_attributions
    from .explain import card_section, explain, format_table
    from .interactions import (
        APPROXIMATORS,
        INDICES,
        BudgetError,
        FormulaGame,
        InteractionResult,
        ValueFunction,
        explain_interactions,
        minimum_budget,
    )
    from .model_output import ModelOutputSpec, NotAPropertyModelError, check_property_model, load_property_model
    from .players import STRATEGIES, FormulaPlayers, coalition_inputs, formula_players, formula_players_batch
    from .plots import (
        plot_aggregate,
        plot_attributions,
        plot_explanation,
        plot_interaction_graph,
        plot_interaction_matrix,
    )

__all__ = [
    "APPROXIMATORS",
    "BASELINES",
    "INDICES",
    "STRATEGIES",
    "AttributionResult",
    "BudgetError",
    "FormulaGame",
    "FormulaPlayers",
    "InteractionResult",
    "ModelOutputSpec",
    "NotAPropertyModelError",
    "ValueFunction",
    "aggregate_interactions",
    "card_section",
    "check_property_model",
    "coalition_inputs",
    "explain",
    "explain_attributions",
    "explain_interactions",
    "format_table",
    "formula_players",
    "formula_players_batch",
    "load_property_model",
    "minimum_budget",
    "plot_aggregate",
    "plot_attributions",
    "plot_explanation",
    "plot_interaction_graph",
    "plot_interaction_matrix",
    "summarise_pairs",
]
