"""Shapley interactions between a formula's elements with ``shapiq``.

Players are the formula's distinct elements (element token + its amount, see :mod:`.players`). The
value of a coalition is the model's explained output (target units, or a class probability) with the
other players masked (``[MASK]``) or removed. Indices: ``k-SII`` (default), ``STII``, ``FSII``, ``SII``
and plain ``SV`` (order 1). Small formulas are computed exactly over all ``2**n`` coalitions; formulas
with more than ``max_exact_players`` elements (or ``method="approximate"``) use a shapiq approximator with
a budget of coalition evaluations. Every coalition is evaluated in batched forward passes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import shapiq
import torch
from tqdm.auto import tqdm

from crossmat.modeling.model_folder import problem_type_of

from .model_output import ModelOutputSpec, select_output
from .players import STRATEGIES, FormulaPlayers, coalition_inputs, formula_players_batch

__all__ = [
    "APPROXIMATORS",
    "DEFAULT_APPROXIMATOR",
    "INDICES",
    "BudgetError",
    "FormulaGame",
    "InteractionResult",
    "ValueFunction",
    "explain_interactions",
    "minimum_budget",
]

INDICES = ("k-SII", "STII", "FSII", "SII", "SV")
APPROXIMATORS: dict[str, type] = {
    "kernelshapiq": shapiq.KernelSHAPIQ,
    "svarmiq": shapiq.SVARMIQ,
    "shapiq": shapiq.SHAPIQ,
    "regressionfsii": shapiq.RegressionFSII,
    "permutationstii": shapiq.PermutationSamplingSTII,
    "kernelshap": shapiq.KernelSHAP,
}
DEFAULT_APPROXIMATOR = {"k-SII": "kernelshapiq", "SII": "kernelshapiq", "STII": "svarmiq", "FSII": "regressionfsii", "SV": "kernelshap"}
HARD_EXACT_LIMIT = 20  # 2**20 coalitions: refuse exact computation beyond this


class BudgetError(ValueError):
    """The approximation budget cannot estimate the requested interactions."""


def minimum_budget(n_players: int, order: int) -> int:
    """Fewest coalition evaluations accepted: one per interaction term up to ``order`` plus one."""
    return sum(math.comb(n_players, k) for k in range(order + 1)) + 1


@dataclass
class InteractionResult:
    """Shapley interactions of one formula (values in the unit of the explained output)."""

    formula: str
    canonical: str
    elements: list[str]
    fractions: list[float]
    index: str
    order: int
    strategy: str
    method: str  # "exact" or "approximate"
    approximator: str | None
    budget: int  # coalitions evaluated
    prediction: float  # value of the full formula
    baseline_value: float  # value of the empty coalition (everything masked/removed)
    output_name: str
    unit: str
    interactions: list[dict] = field(default_factory=list)  # {"elements": [...], "players": [...], "value": v}
    note: str = ""
    interaction_values: shapiq.InteractionValues | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("interaction_values")
        return d

    def value(self, *elements: str) -> float:
        """Value of the interaction between ``elements`` (0.0 when not estimated)."""
        key = sorted(elements)
        for row in self.interactions:
            if sorted(row["elements"]) == key:
                return row["value"]
        return 0.0

    def of_order(self, k: int) -> list[dict]:
        """Interactions of order ``k`` sorted by decreasing ``|value|``."""
        return sorted((r for r in self.interactions if len(r["elements"]) == k), key=lambda r: -abs(r["value"]))

    def matrix(self) -> np.ndarray:
        """``n x n`` matrix: first-order values on the diagonal, pair interactions off the diagonal."""
        n = len(self.elements)
        m = np.zeros((n, n))
        for row in self.interactions:
            p = row["players"]
            if len(p) == 1:
                m[p[0], p[0]] = row["value"]
            elif len(p) == 2:
                m[p[0], p[1]] = m[p[1], p[0]] = row["value"]
        return m

    def table(self) -> list[dict]:
        """Flat rows for CSV: formula, index, order, elements ("Fe|O"), value."""
        return [
            {
                "formula": self.formula,
                "index": self.index,
                "order": len(r["elements"]),
                "elements": "|".join(r["elements"]),
                "value": r["value"],
            }
            for r in sorted(self.interactions, key=lambda r: (len(r["elements"]), -abs(r["value"])))
        ]


class ValueFunction:
    """Batched model evaluation of coalitions of one or many formulas."""

    def __init__(self, model, output: ModelOutputSpec | None = None, batch_size: int = 512) -> None:
        self.model = model.eval()
        self.kind, self.index, self.name, self.unit = (output or ModelOutputSpec()).resolve(model)
        self.problem = problem_type_of(model.config)
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.calls = 0

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, attention: torch.Tensor) -> np.ndarray:
        out = []
        for s in range(0, ids.shape[0], self.batch_size):
            i, a = ids[s : s + self.batch_size].to(self.device), attention[s : s + self.batch_size].to(self.device)
            width = int(a.sum(1).max())  # rows are left-aligned; drop all-pad columns
            logits = self.model(input_ids=i[:, :width], attention_mask=a[:, :width]).logits
            out.append(select_output(logits, self.kind, self.index, self.problem).double().cpu().numpy())
        self.calls += ids.shape[0]
        return np.concatenate(out) if out else np.zeros(0)

    def coalitions(self, players: FormulaPlayers, coalitions: np.ndarray, strategy: str) -> np.ndarray:
        ids, att = coalition_inputs(players, coalitions, strategy)
        return self(ids, att)


class FormulaGame(shapiq.Game):
    """A shapiq game: players are the formula's elements, values are model outputs (not normalised)."""

    def __init__(self, players: FormulaPlayers, value_fn: ValueFunction, strategy: str = "mask") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"masking strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.players, self.value_fn, self.strategy = players, value_fn, strategy
        super().__init__(n_players=players.n_players, normalize=False, player_names=list(players.elements))

    def value_function(self, coalitions: np.ndarray) -> np.ndarray:
        return self.value_fn.coalitions(self.players, np.asarray(coalitions, dtype=bool), self.strategy)


def _all_coalitions(n: int) -> np.ndarray:
    codes = np.arange(2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


def _lookup_game(values: np.ndarray, n: int) -> Callable[[np.ndarray], np.ndarray]:
    weights = 1 << np.arange(n, dtype=np.int64)

    def game(coalitions: np.ndarray) -> np.ndarray:
        return values[np.asarray(coalitions, dtype=np.int64) @ weights]

    return game


def _exact_values_batched(
    value_fn: ValueFunction, players: Sequence[FormulaPlayers], strategy: str, chunk_rows: int, progress: bool
) -> list[np.ndarray]:
    """Values of all ``2**n`` coalitions of every formula, evaluated in shared batches."""
    results: list[np.ndarray] = []
    pending_ids: list[torch.Tensor] = []
    pending_att: list[torch.Tensor] = []
    pending_sizes: list[int] = []

    def flush() -> None:
        if not pending_sizes:
            return
        width = max(t.shape[1] for t in pending_ids)
        ids = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in pending_ids])
        att = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in pending_att])
        vals = value_fn(ids, att)
        results.extend(np.split(vals, np.cumsum(pending_sizes)[:-1]))
        pending_ids.clear(), pending_att.clear(), pending_sizes.clear()

    for p in tqdm(players, desc="coalitions", unit="formula", disable=not progress):
        ids, att = coalition_inputs(p, _all_coalitions(p.n_players), strategy)
        pending_ids.append(ids), pending_att.append(att), pending_sizes.append(ids.shape[0])
        if sum(pending_sizes) >= chunk_rows:
            flush()
    flush()
    return results


def _to_result(
    p: FormulaPlayers, iv: shapiq.InteractionValues, *, index, order, strategy, method, approximator, budget,
    prediction, baseline, value_fn, note,
) -> InteractionResult:
    rows = []
    for key, pos in iv.interaction_lookup.items():
        if len(key) == 0:
            continue
        rows.append(
            {"elements": [p.elements[k] for k in key], "players": [int(k) for k in key], "value": float(iv.values[pos])}
        )
    rows.sort(key=lambda r: (len(r["players"]), -abs(r["value"])))
    return InteractionResult(
        formula=p.formula, canonical=p.canonical, elements=p.elements, fractions=p.fractions, index=index,
        order=order, strategy=strategy, method=method, approximator=approximator, budget=budget,
        prediction=float(prediction), baseline_value=float(baseline), output_name=value_fn.name, unit=value_fn.unit,
        interactions=rows, note=note, interaction_values=iv,
    )


def explain_interactions(
    model,
    tokenizer,
    formulas: str | Sequence[str],
    *,
    index: str = "k-SII",
    order: int = 2,
    strategy: str = "mask",
    method: str = "auto",
    max_exact_players: int = 12,
    budget: int | None = None,
    approximator: str | None = None,
    output: ModelOutputSpec | None = None,
    batch_size: int = 512,
    random_state: int | None = 0,
    progress: bool = False,
) -> list[InteractionResult]:
    """Shapley interactions for each formula; returns one :class:`InteractionResult` per formula.

    ``method``: ``"auto"`` (exact up to ``max_exact_players`` elements, else approximate and warn),
    ``"exact"`` or ``"approximate"``. ``budget``: coalitions per approximated formula (default
    ``min(2**n, max(2048, 4 * minimum_budget))``); a budget below :func:`minimum_budget` raises
    :class:`BudgetError`, a budget ``>= 2**n`` computes exactly. ``SV`` is always order 1.
    """
    if index not in INDICES:
        raise ValueError(f"index must be one of {INDICES}, got {index!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"masking strategy must be one of {STRATEGIES}, got {strategy!r}")
    if method not in ("auto", "exact", "approximate"):
        raise ValueError(f"method must be auto/exact/approximate, got {method!r}")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    if index == "SV":
        order = 1
    if approximator is not None:
        if approximator not in APPROXIMATORS:
            raise ValueError(f"approximator must be one of {sorted(APPROXIMATORS)}, got {approximator!r}")
        if index not in APPROXIMATORS[approximator].valid_indices:
            raise ValueError(f"approximator {approximator!r} cannot estimate {index}")
    single = isinstance(formulas, str)
    formulas = [formulas] if single else list(formulas)
    players = formula_players_batch(formulas, tokenizer, rows=[None] if single else None)
    value_fn = ValueFunction(model, output, batch_size)

    exact_ids: list[int] = []
    approx_ids: list[int] = []
    for i, p in enumerate(players):
        n = p.n_players
        k = min(order, n)
        if method == "exact" and n > HARD_EXACT_LIMIT:
            raise ValueError(f"{p.formula!r} has {n} elements: exact computation needs 2**{n} coalitions; use approximation")
        if budget is not None and budget < 2**n and budget < minimum_budget(n, k):
            raise BudgetError(
                f"{p.formula!r}: budget {budget} is too small for order {k} with {n} elements "
                f"(at least {minimum_budget(n, k)} coalition evaluations are needed)"
            )
        wants_approx = method == "approximate" or (method == "auto" and n > max_exact_players)
        if wants_approx and not (budget is not None and budget >= 2**n):
            approx_ids.append(i)
        else:
            exact_ids.append(i)

    results: dict[int, InteractionResult] = {}
    all_values = _exact_values_batched(value_fn, [players[i] for i in exact_ids], strategy, batch_size * 8, progress)
    for i, vals in zip(exact_ids, all_values, strict=True):
        p = players[i]
        n, k = p.n_players, min(order, p.n_players)
        computer = shapiq.ExactComputer(_lookup_game(vals, n), n_players=n)
        iv = computer(index, order=k)
        note = f"exact over all {2**n} coalitions"
        if method != "exact" and budget is not None and budget >= 2**n and n > max_exact_players:
            note += f" (budget {budget} >= 2**{n})"
        results[i] = _to_result(
            p, iv, index=index, order=k, strategy=strategy, method="exact", approximator=None, budget=2**n,
            prediction=vals[-1], baseline=vals[0], value_fn=value_fn, note=note,
        )
    for i in approx_ids:
        p = players[i]
        n, k = p.n_players, min(order, p.n_players)
        b = budget if budget is not None else min(2**n, max(2048, 4 * minimum_budget(n, k)))
        name = approximator or DEFAULT_APPROXIMATOR[index]
        cls = APPROXIMATORS[name]
        approx = cls(n=n, random_state=random_state) if name == "kernelshap" else cls(
            n=n, max_order=k, index=index, random_state=random_state
        )
        if b < 4 * minimum_budget(n, k):
            warnings.warn(
                f"{p.formula!r}: budget {b} is below 4x the minimum ({minimum_budget(n, k)}) for order {k}; "
                "pair estimates at such budgets were far off in our measurements (docs/interpretability.md)",
                stacklevel=2,
            )
        game = FormulaGame(p, value_fn, strategy)
        iv = approx.approximate(b, game)
        ends = game(np.stack([np.zeros(n, bool), np.ones(n, bool)]))
        note = (
            f"{n} elements: {2**n} coalitions is too many for exact computation, "
            f"approximated with {cls.__name__} using {b} coalition evaluations"
        )
        if method == "auto":
            warnings.warn(f"{p.formula!r}: {note}", stacklevel=2)
        results[i] = _to_result(
            p, iv, index=index, order=k, strategy=strategy, method="approximate", approximator=cls.__name__,
            budget=b, prediction=ends[1], baseline=ends[0], value_fn=value_fn, note=note,
        )
    return [results[i] for i in range(len(players))]
