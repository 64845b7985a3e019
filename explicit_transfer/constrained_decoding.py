"""Composition-constrained decoding for the CIF language model: a ``transformers`` ``LogitsProcessor``.

:class:`CompositionConstrainedLogitsProcessor` makes every sampled CIF follow the layout of the training text
(:func:`crossmat.dataset_builders.cif_text.render_cif`) and hold exactly the prompt's cell composition. Each
sequence of the batch runs its own small automaton over the tokens it has written; at every step the processor
sets the logits of the tokens the automaton does not allow to ``-inf`` (one boolean mask for the batch).

What the model still chooses: the space group (``space_group="free"``), the cell lengths and angles, which
species the next atom-site row holds, its label digits, its multiplicity (``free``) and its fractional
coordinates. What is written for it (forced): every CIF keyword and separator, ``_symmetry_Int_Tables_number``
(from the chosen space group), ``_chemical_formula_structural`` / ``_chemical_formula_sum`` /
``_cell_formula_units_Z`` (from the prompt's composition), ``_cell_volume`` (computed from the written
lengths and angles) and the end of the CIF; occupancies are ``1`` or ``1.0...``. In P1 the atom-site loop may be
preceded by the identity-only symmetry-operation loop (the layout of CIFs as given to ``train-cif-lm``).

Rules in the atom-site block (state per sequence: each species' remaining count):

* a row may only start with a species whose remaining count is positive;
* its multiplicity must not exceed that count (``p1``: always ``1``; ``free``: a divisor of the order of the
  space group's operations in the conventional cell, as every Wyckoff multiplicity is);
* the block (and with it the CIF: a blank line) may only end when every count is zero, and no row may be
  started once they all are.

``space_group="p1"`` forces ``P1``: every row is one atom, so the parsed cell has exactly the prompt's
composition (the guarantee the tests check). ``"free"`` lets the model write a space group and Wyckoff
multiplicities; the declared multiplicities then add up to the prompt's counts, but the parser expands each
row by the coordinates' real orbit, which differs from the declared multiplicity when the model writes a
coordinate off its Wyckoff position, so the parsed composition is not guaranteed. ``"auto"`` uses ``p1`` when
one row per atom fits the token budget, ``free`` otherwise.

Numbers: lengths 1–99.x Å; angles 30–150° with the third angle kept inside the range that gives a real
lattice (``|alpha - beta| < gamma < min(alpha + beta, 360 - alpha - beta)``); coordinates 0.x or 1.x;
``_cell_length_a`` takes 1–``max_decimals`` decimals and every later number the same count (the training text
rounds all numbers alike); labels 1–3 digits. With ``max_new_tokens``, one more decimal of ``_cell_length_a``, one
more label digit or the longer loop layout is only allowed while the longest completion still fits the budget
(a CIF cut off by the budget would not parse). No reachable state allows zero tokens, so sampling never meets a
dead end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from pymatgen.core import Composition, Lattice
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from crossmat.dataset_builders.cif_text import encode_cif

__all__ = ["SPACE_GROUP_POLICIES", "CompositionConstrainedLogitsProcessor", "cif_header_fields"]

SPACE_GROUP_POLICIES = ("p1", "free", "auto")
_ROW_TOKENS = 40  # about the tokens of one P1 atom-site row (used by ``auto``)
_HEADER_TOKENS = 190  # about the tokens of the header and the loop keys


def cif_header_fields(composition: Composition) -> dict[str, str]:
    """The composition fields pymatgen's ``CifWriter`` writes for a cell of this composition."""
    comp = Composition(composition)
    fsum = comp.formula
    _, fu = comp.get_reduced_composition_and_factor()
    return {"structural": comp.reduced_formula, "sum": f"'{fsum}'" if " " in fsum else fsum, "Z": str(int(fu))}


@cache
def _int_strings(lo: int, hi: int) -> tuple[frozenset[str], frozenset[str]]:
    """(allowed integer strings, their prefixes) for integers in [lo, hi]."""
    full = frozenset(str(n) for n in range(lo, hi + 1))
    return full, frozenset(s[:k] for s in full for k in range(len(s) + 1))


@cache
def _space_group_info(symbol: str) -> tuple[int, int] | None:
    """(international number, order of the operations in the conventional cell) or None if pymatgen refuses it."""
    try:
        from pymatgen.symmetry.groups import SpaceGroup

        g = SpaceGroup(symbol)
        return g.int_number, len(g.symmetry_ops)
    except Exception:  # noqa: BLE001 - a symbol pymatgen cannot read is simply not offered
        return None


@dataclass
class _Seq:
    """Automaton state of one sequence."""

    seg: int = 0  # index into the layout
    pos: int = 0  # position inside a forced literal
    forced: list[int] = field(default_factory=list)  # literal being forced (dynamic segments)
    buf: str = ""  # characters of the number being written
    values: dict[str, float] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)
    sg_order: int = 1
    row: str = "start"  # sub-state inside the atom-site block
    species: str = ""
    coord: int = 0
    done: bool = False
    n: int = 0  # tokens written so far


class CompositionConstrainedLogitsProcessor(LogitsProcessor):
    """Masks the logits so that each sampled CIF has the prompt's cell composition (see the module docstring).

    Args:
        tokenizer: the CIF tokenizer of the model (single-character digits, element symbols, CIF keywords).
        compositions: the cell composition of each prompt (what ``data_<cell composition>`` says), one per input
            row; with ``num_return_sequences=k`` each is repeated ``k`` times. A single composition applies to all.
        space_group: ``"p1"``, ``"free"`` or ``"auto"`` (see the module docstring).
        max_new_tokens: the generation budget (used by ``auto``).
        max_decimals: most decimals a written number may have.
        num_return_sequences: sequences per input row (as passed to ``generate``).

    Works with ``model.generate(..., logits_processor=LogitsProcessorList([proc]))``, greedy or sampled; build one
    per ``generate`` call (it also resets itself when it sees a shorter or differently sized batch).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, compositions: Composition | str | Sequence[Composition | str],
                 space_group: str = "p1", max_new_tokens: int | None = None, max_decimals: int = 6,
                 num_return_sequences: int = 1) -> None:
        if space_group not in SPACE_GROUP_POLICIES:
            raise ValueError(f"space_group {space_group!r}; choose one of {list(SPACE_GROUP_POLICIES)}")
        if isinstance(compositions, (str, Composition)):
            compositions = [compositions]
        self.compositions = [Composition(c) for c in compositions]
        for c in self.compositions:
            if not c.num_atoms or any(abs(a - round(a)) > 1e-6 for a in c.values()):
                raise ValueError(f"cell composition {c.formula!r} must have whole, positive atom counts")
        self.k = num_return_sequences
        self.policy, self.max_new_tokens, self.max_decimals = space_group, max_new_tokens, max_decimals
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.vocab_size = max(len(tokenizer), max(vocab.values()) + 1)
        self.id_of = vocab
        self.tok = {i: t for t, i in vocab.items()}
        need = [str(d) for d in range(10)] + [".", " ", "\n"]
        missing = [t for t in need if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks CIF tokens {missing}; constrained decoding needs the CIF tokenizer")
        self.digit = {str(d): vocab[str(d)] for d in range(10)}
        self.DOT, self.SP, self.NL = vocab["."], vocab[" "], vocab["\n"]
        self.sg_tokens = {}  # token id -> (symbol, int number, order)
        for t, i in vocab.items():
            if t.endswith("_sg"):
                info = _space_group_info(t[:-3])
                if info is not None:
                    self.sg_tokens[i] = (t[:-3], *info)
        self.p1 = next((i for i, (s, *_) in self.sg_tokens.items() if s == "P1"), None)
        self.species_id: dict[str, int] = {}
        self._layouts: dict[int, tuple[list, str, tuple[int, int]]] = {}
        self.states: list[_Seq] = []
        self._seen = -1
        self.stats = {"forced_tokens": 0, "steps": 0}

    # ---- layout -------------------------------------------------------------------------------------------------
    def _enc(self, text: str) -> list[int]:
        ids = encode_cif(self.tokenizer, text)
        if self.tokenizer.unk_token_id is not None and self.tokenizer.unk_token_id in ids:
            raise ValueError(f"constrained decoding: {text!r} has tokens outside the CIF vocabulary")
        return ids

    def _layout(self, b: int) -> tuple[list, str, tuple[int, int]]:
        """Layout (list of segments) and space-group policy of batch row ``b`` (cached per composition)."""
        ci = (b // self.k) if len(self.compositions) > 1 else 0
        if ci >= len(self.compositions):
            raise ValueError(f"batch row {b}: {len(self.compositions)} composition(s) for "
                             f"num_return_sequences={self.k}")
        if ci in self._layouts:
            return self._layouts[ci]
        comp = self.compositions[ci]
        f = cif_header_fields(comp)
        policy = self.policy
        if policy == "auto":
            fits = self.max_new_tokens is None or _HEADER_TOKENS + _ROW_TOKENS * comp.num_atoms <= self.max_new_tokens
            policy = "p1" if fits else "free"
        if policy == "p1" and self.p1 is None:
            raise ValueError("space_group='p1' needs the token 'P1_sg' in the vocabulary")
        lit = self._enc
        layout: list[tuple[str, Any]] = [("lit", lit("_symmetry_space_group_name_H-M "))]
        layout += [("lit", [self.p1])] if policy == "p1" else [("sg", None)]
        layout += [("lit", [self.NL])]
        for key in ("a", "b", "c"):
            layout += [("lit", lit(f"_cell_length_{key} ")), ("num", (key, 1, 99, (0, 9)))]
        for key in ("alpha", "beta", "gamma"):
            layout += [("lit", lit(f"_cell_angle_{key} ")), ("num", (key, 30, 150, (0, 9)))]
        layout += [("lit", lit("_symmetry_Int_Tables_number ")), ("dyn", "int_number"),
                   ("lit", lit(f"_chemical_formula_structural {f['structural']}\n_chemical_formula_sum {f['sum']}\n"
                               "_cell_volume ")), ("dyn", "volume"),
                   ("lit", lit(f"_cell_formula_units_Z {f['Z']}\n"))]
        sites = lit("loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n"
                    " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n")
        # the CIFs as given to `train-cif-lm` (preprocess_cif) keep pymatgen's symmetry-operation loop; in P1 it is
        # the identity alone, so either layout is allowed (a space group's full operation list is not written)
        symops = lit("loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n 1 'x, y, z'\n")
        layout += [("alt", [sites, symops + sites] if policy == "p1" else [sites]), ("sites", None)]
        for el in comp.elements:
            sym = el.symbol
            if sym not in self.id_of:
                raise ValueError(f"element {sym} is not a token of the CIF vocabulary")
            self.species_id[sym] = self.id_of[sym]
        self._layouts[ci] = (layout, policy, (self.max_decimals, 3))
        return self._layouts[ci]

    def _worst_rest(self, b: int, st: _Seq, seg: int, dec: int) -> int:
        """Most tokens the layout can still take from the start of segment ``seg`` (labels of one digit, numbers
        with ``dec`` decimals, every remaining atom in its own row)."""
        layout, policy, _ = self._layout(b)
        mult = 1 if policy == "p1" else 3
        total = 0
        for kind, arg in layout[seg:]:
            if kind == "lit":
                total += len(arg)
            elif kind == "alt":
                total += max(map(len, arg))
            elif kind == "sg":
                total += 1
            elif kind == "num":
                total += (2 if arg[0] in "abc" else 3) + 2 + dec
            elif kind == "dyn":
                total += 4 if arg == "int_number" else 8 + dec  # volume < 99.99**3: 6 integer digits
            else:
                total += sum(st.remaining.values()) * self._row_worst(dec, 1, mult) + 1
        return total

    @staticmethod
    def _row_worst(dec: int, label: int, mult: int) -> int:
        return 4 + label + 1 + mult + 1 + 3 * (3 + dec) + (2 + dec) + 1

    def _fits(self, b: int, st: _Seq, extra: int) -> bool:
        """Whether writing ``extra`` more tokens than the shortest choice still leaves room to finish the CIF."""
        if self.max_new_tokens is None:
            return True
        layout, policy, _ = self._layout(b)
        kind, arg = layout[st.seg]
        dec = int(st.values.get("decimals", 0))
        if kind == "num":  # only cell_length_a has a free number of decimals: rest with its decimals (+1 if extended)
            d = len(st.buf) - st.buf.index(".") - 1 + extra
            need = extra + 1 + self._worst_rest(b, st, st.seg + 1, d)
        elif kind == "alt":
            return True  # checked in _allowed
        else:  # a label digit: the rest of this row, then every other remaining atom in its own row
            mult = 1 if policy == "p1" else 3
            rest_row = 1 + mult + 1 + 3 * (3 + dec) + (2 + dec) + 1
            need = extra + rest_row + (sum(st.remaining.values()) - 1) * self._row_worst(dec, 1, mult) + 1
        return st.n + need <= self.max_new_tokens

    def _new_state(self, b: int) -> _Seq:
        comp = self.compositions[(b // self.k) if len(self.compositions) > 1 else 0]
        return _Seq(remaining={el.symbol: int(round(n)) for el, n in comp.items()})

    # ---- automaton ----------------------------------------------------------------------------------------------
    def _num_spec(self, st: _Seq, spec: tuple) -> tuple[str, int, int]:
        key, lo, hi, _ = spec
        if key == "gamma":  # keep the lattice real: |alpha - beta| < gamma < min(alpha + beta, 360 - alpha - beta)
            a, b = st.values["alpha"], st.values["beta"]
            lo = max(lo, math.floor(abs(a - b)) + 1)
            hi = min(hi, math.floor(min(a + b, 360 - a - b) - 1))
        return key, lo, hi

    def _dyn_literal(self, st: _Seq, what: str) -> list[int]:
        if what == "int_number":
            return self._enc(f"{st.values.get('int_number', 1)}\n")
        v = st.values
        lat = Lattice.from_parameters(v["a"], v["b"], v["c"], v["alpha"], v["beta"], v["gamma"])
        return self._enc(f"{lat.volume:.{int(v.get('decimals', 4))}f}\n")

    def _number_allowed(self, buf: str, lo: int, hi: int, end: int, decs: tuple[int, int]) -> list[int]:
        ints, prefixes = _int_strings(lo, hi)
        if "." not in buf:
            out = [self.digit[d] for d in "0123456789" if buf + d in prefixes]
            if buf in ints:
                out.append(self.DOT)
            return out
        dec = len(buf) - buf.index(".") - 1
        out = list(self.digit.values()) if dec < decs[1] else []
        if dec >= decs[0]:
            out.append(end)
        return out

    def _allowed(self, b: int, st: _Seq) -> list[int] | None:
        """Token ids allowed next for sequence ``b`` (None: no constraint)."""
        if st.done:
            return None
        layout, policy, (max_dec, max_label) = self._layout(b)
        kind, arg = layout[st.seg]
        dec = st.values.get("decimals")
        decs = (1, max_dec) if dec is None else (int(dec), int(dec))
        if kind == "lit":
            return [arg[st.pos]]
        if kind == "dyn":
            if not st.forced:
                st.forced = self._dyn_literal(st, arg)
            return [st.forced[st.pos]]
        if kind == "sg":
            return list(self.sg_tokens)
        if kind == "alt":  # one of several literals (prefix-free), chosen by the model token by token
            n = len(st.forced)
            options = [a for a in arg if len(a) > n and a[:n] == st.forced]
            if self.max_new_tokens is not None and len(options) > 1:
                rest = self._worst_rest(b, st, st.seg + 1, int(st.values.get("decimals", 0)))
                fitting = [a for a in options if st.n + len(a) - n + rest <= self.max_new_tokens]
                options = fitting or [min(options, key=len)]
            return sorted({a[n] for a in options})
        if kind == "num":
            _, lo, hi = self._num_spec(st, arg)
            out = self._number_allowed(st.buf, lo, hi, self.NL, decs)
            if "." in st.buf and self.NL in out and len(out) > 1 and not self._fits(b, st, 1):
                out = [self.NL]  # one more decimal of cell_length_a would not leave room to finish the CIF
            return out
        out = self._site_allowed(st, policy, decs, max_label)
        if st.row == "label" and self.SP in out and len(out) > 1 and not self._fits(b, st, 1):
            out = [self.SP]
        return out

    def _site_allowed(self, st: _Seq, policy: str, decs: tuple[int, int], max_label: int) -> list[int]:
        r = st.row
        if r == "start":  # a new row, or the blank line that ends the CIF once every atom is placed
            return [self.SP] if sum(st.remaining.values()) > 0 else [self.NL]
        if r == "species":
            return [self.species_id[s] for s, n in st.remaining.items() if n > 0]
        if r == "sp1":
            return [self.SP]
        if r == "label_el":
            return [self.species_id[st.species]]
        if r == "label":
            n = len(st.buf)
            return ([self.digit[d] for d in "0123456789"] if n < max_label else []) + ([self.SP] if n >= 1 else [])
        if r == "mult":
            if policy == "p1":
                return [self.digit["1"]] if not st.buf else [self.SP]
            allowed = [m for m in range(1, st.remaining[st.species] + 1) if st.sg_order % m == 0]
            strs = {str(m) for m in allowed}
            out = [self.digit[d] for d in "0123456789" if any(s.startswith(st.buf + d) for s in strs)]
            return out + ([self.SP] if st.buf in strs else [])
        if r == "coord":
            return self._number_allowed(st.buf, 0, 1, self.SP, decs)
        if r == "occ":  # 1, or 1.0...0 with at most the numbers' decimals
            if not st.buf:
                return [self.digit["1"]]
            if st.buf == "1":
                return [self.DOT, self.NL]
            return ([self.digit["0"]] if len(st.buf) - 2 < decs[1] else []) + ([self.NL] if len(st.buf) > 2 else [])
        raise AssertionError(r)

    def _feed(self, b: int, st: _Seq, token: int) -> None:
        """Advance the automaton of sequence ``b`` by the token it just wrote."""
        if st.done:
            return
        st.n += 1
        layout, policy, _ = self._layout(b)
        kind, arg = layout[st.seg]
        if kind in ("lit", "dyn"):
            seq = arg if kind == "lit" else st.forced
            st.pos += 1
            if st.pos == len(seq):
                st.seg, st.pos, st.forced = st.seg + 1, 0, []
            return
        if kind == "alt":
            st.forced.append(token)
            if any(a == st.forced for a in arg):
                st.seg, st.forced = st.seg + 1, []
            return
        if kind == "sg":
            _, num, order = self.sg_tokens[token]
            st.values["int_number"], st.sg_order = num, order
            st.seg += 1
            return
        if kind == "num":
            if token == self.NL:
                key = arg[0]
                st.values[key] = float(st.buf)
                if key == "a":
                    st.values["decimals"] = len(st.buf) - st.buf.index(".") - 1
                st.buf, st.seg = "", st.seg + 1
            else:
                st.buf += self.tok[token]
            return
        self._site_feed(st, token, policy)

    def _site_feed(self, st: _Seq, token: int, policy: str) -> None:
        r, t = st.row, self.tok[token]
        if r == "start":
            if token == self.NL:
                st.done = True
            else:
                st.row = "species"
        elif r == "species":
            st.species, st.row = t, "sp1"
        elif r == "sp1":
            st.row = "label_el"
        elif r == "label_el":
            st.row, st.buf = "label", ""
        elif r == "label":
            if token == self.SP:
                st.row, st.buf = "mult", ""
            else:
                st.buf += t
        elif r == "mult":
            if token == self.SP:
                st.remaining[st.species] -= int(st.buf)
                st.row, st.buf, st.coord = "coord", "", 0
            else:
                st.buf += t
        elif r == "coord":
            if token == self.SP:
                st.buf = ""
                st.coord += 1
                if st.coord == 3:
                    st.row = "occ"
            else:
                st.buf += t
        elif r == "occ":
            if token == self.NL:
                st.row, st.buf = "start", ""
            else:
                st.buf += t

    # ---- LogitsProcessor ----------------------------------------------------------------------------------------
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n, length = input_ids.shape
        if len(self.states) != n or length <= self._seen:  # a new generate call
            self.states = [self._new_state(b) for b in range(n)]
            self._seen = length
        else:
            new = input_ids[:, self._seen:].tolist()
            for b, toks in enumerate(new):
                for t in toks:
                    self._feed(b, self.states[b], t)
            self._seen = length
        rows, cols, free_rows = [], [], []
        for b, st in enumerate(self.states):
            allowed = self._allowed(b, st)
            if allowed is None:
                free_rows.append(b)
                continue
            if not allowed:  # never reached (every state offers a token); kept as a loud guard
                raise RuntimeError(f"constrained decoding reached a dead end in sequence {b} ({st})")
            if len(allowed) == 1:
                self.stats["forced_tokens"] += 1
            rows += [b] * len(allowed)
            cols += allowed
        self.stats["steps"] += 1
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        if rows:
            mask[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = True
        if free_rows:
            mask[torch.tensor(free_rows, device=scores.device)] = True
        return scores.masked_fill(~mask, -math.inf)

    def allowed_tokens(self, b: int = 0) -> list[int] | None:
        """Token ids sequence ``b`` may write next (None once its CIF is complete); for tests and debugging."""
        return self._allowed(b, self.states[b])
