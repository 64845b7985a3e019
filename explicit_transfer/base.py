"""Common generator interface: formula(s) -> ranked candidate structures, with per-formula failure records."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Composition, Structure

from crossmat.tokenization import FormulaError, parse_formula

__all__ = [
    "GENERATION_ERRORS",
    "Candidate",
    "GenerationFailure",
    "GenerationBatch",
    "StructureGenerator",
    "parse_target",
]


@dataclass
class Candidate:
    """One generated structure for a formula. Higher ``score`` is better (e.g. ``-energy_per_atom``)."""

    structure: Structure
    score: float
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cif": self.structure.to(fmt="cif"), "score": float(self.score), "source": self.source,
                "metadata": self.metadata}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(Structure.from_str(d["cif"], fmt="cif"), float(d["score"]), d["source"], dict(d.get("metadata", {})))


@dataclass
class GenerationFailure:
    """Why no candidate could be produced for one input row."""

    row: int
    formula: object
    generator: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "formula": str(self.formula), "generator": self.generator, "reason": self.reason}


class GenerationBatch(list):
    """``list[list[Candidate]]`` (one list per input formula, empty when it failed) plus ``failures``."""

    def __init__(self, items: Sequence[list[Candidate]] = (), failures: Sequence[GenerationFailure] = ()) -> None:
        super().__init__(items)
        self.failures: list[GenerationFailure] = list(failures)

    def failure_for(self, row: int) -> GenerationFailure | None:
        return next((f for f in self.failures if f.row == row), None)


def parse_target(formula: object) -> Composition:
    """Parse a user formula into a pymatgen Composition (raises ``FormulaError`` naming the reason)."""
    if isinstance(formula, Composition):
        return formula
    comp = parse_formula(formula)
    if any(abs(a - round(a)) > 1e-6 for a in comp.values()):
        raise FormulaError(formula, "fractional (disordered) compositions cannot be turned into an ordered crystal")
    return comp


# What a generator raises for a formula it cannot handle (bad formula, no template, degenerate geometry,
# a model that produced nothing usable). Programming errors (TypeError, AttributeError, ...) propagate.
GENERATION_ERRORS: tuple[type[Exception], ...] = (ValueError, LookupError, RuntimeError, ArithmeticError)


def formula_rows(formulas: Sequence[object] | str) -> Sequence[object]:
    """The rows to generate for: a single string is one formula, not a sequence of one-character formulas."""
    return [formulas] if isinstance(formulas, str) else formulas


class StructureGenerator(ABC):
    """Base class: subclasses implement :meth:`_generate_one` or override :meth:`generate` for batching."""

    name: str = "generator"

    def generate(self, formulas: Sequence[object] | str, n_candidates: int = 1) -> GenerationBatch:
        """Return up to ``n_candidates`` ranked candidates per formula; failures are recorded, never raised."""
        out = GenerationBatch()
        for row, formula in enumerate(formula_rows(formulas)):
            try:
                comp = parse_target(formula)
                cands = self._generate_one(comp, n_candidates)
                if not cands:
                    raise ValueError("no candidate produced")
            except GENERATION_ERRORS as err:  # a formula that cannot be generated becomes a record, the batch goes on
                out.append([])
                out.failures.append(GenerationFailure(row, formula, self.name, f"{type(err).__name__}: {err}"))
                continue
            out.append(cands[:n_candidates])
        return out

    @abstractmethod
    def _generate_one(self, composition: Composition, n_candidates: int) -> list[Candidate]: ...
