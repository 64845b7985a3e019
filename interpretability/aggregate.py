"""Dataset-level analysis: which element pairs interact most for a model (per task).

Runs :func:`explain_interactions` over many formulas in chunks, appends every finished formula to
``interactions.jsonl`` (so an interrupted run resumes where it stopped), reports invalid formulas in
``rejected.csv`` (row, id, formula, reason) and writes ``pairs.csv`` / ``elements.csv`` /
``summary.json`` / ``top_pairs.png``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from crossmat.tokenization import FormulaError

from .interactions import explain_interactions
from .model_output import ModelOutputSpec
from .plots import plot_aggregate

__all__ = ["aggregate_interactions", "summarise_pairs"]


def summarise_pairs(records: Sequence[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(pairs, elements)`` tables from per-formula records (as stored in ``interactions.jsonl``).

    Pairs: ``pair`` ("Fe-O", symbols sorted), ``count``, ``mean``, ``mean_abs``, ``max_abs``, ``sum_abs``
    (total |value| over the dataset: frequent *and* strong); sorted by ``mean_abs``. Elements: the same statistics of first-order values.
    """
    rows = [
        {"key": "-".join(sorted(r["elements"])), "order": len(r["elements"]), "value": r["value"]}
        for rec in records
        for r in rec["interactions"]
        if len(r["elements"]) <= 2
    ]
    cols = ["count", "mean", "mean_abs", "max_abs", "sum_abs"]
    if not rows:
        empty = pd.DataFrame(columns=["pair", *cols])
        return empty, empty.rename(columns={"pair": "element"})
    df = pd.DataFrame(rows)
    df["abs"] = df["value"].abs()

    def stats(part: pd.DataFrame, name: str) -> pd.DataFrame:
        g = part.groupby("key").agg(count=("value", "size"), mean=("value", "mean"), mean_abs=("abs", "mean"),
                                    max_abs=("abs", "max"), sum_abs=("abs", "sum"))
        return g.sort_values("mean_abs", ascending=False).reset_index().rename(columns={"key": name})

    return stats(df[df.order == 2], "pair"), stats(df[df.order == 1], "element")


def aggregate_interactions(
    model,
    tokenizer,
    formulas: Sequence[str],
    out_dir: str | Path,
    *,
    ids: Sequence[str] | None = None,
    task: str = "",
    index: str = "k-SII",
    strategy: str = "mask",
    max_exact_players: int = 10,
    budget: int | None = None,
    output: ModelOutputSpec | None = None,
    chunk_size: int = 256,
    min_count: int = 10,
    top: int = 20,
    progress: bool = True,
) -> dict:
    """Order-2 interactions for every formula, aggregated per element pair; returns the summary dict.

    ``top_pairs`` ranks pairs seen in at least ``min_count`` formulas by mean |interaction| (all pairs are in
    ``pairs.csv``); ``top_pairs_by_total`` ranks all pairs by total |interaction| over the dataset.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(formulas))]
    if len(ids) != len(formulas):
        raise ValueError(f"{len(ids)} ids for {len(formulas)} formulas")
    store = out / "interactions.jsonl"
    done: dict[str, dict] = {}
    if store.exists():
        for line in store.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["id"]] = rec
    rejected, todo = [], []
    for row, (rid, f) in enumerate(zip(ids, formulas, strict=True)):
        if rid in done:
            continue
        try:
            tokenizer.prepare_formula(f, row)
        except FormulaError as err:
            rejected.append({"row": row, "id": rid, "formula": f, "reason": err.reason})
            continue
        todo.append((rid, f))
    with store.open("a") as fh:
        for s in tqdm(range(0, len(todo), chunk_size), desc=f"interactions {task}".strip(), disable=not progress):
            chunk = todo[s : s + chunk_size]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # approximations are recorded per formula in "method"
                res = explain_interactions(
                    model, tokenizer, [f for _, f in chunk], index=index, order=2, strategy=strategy,
                    max_exact_players=max_exact_players, budget=budget, output=output,
                )
            for (rid, _), r in zip(chunk, res, strict=True):
                rec = {"id": rid, **r.to_dict()}
                done[rid] = rec
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
    pd.DataFrame(rejected, columns=["row", "id", "formula", "reason"]).to_csv(out / "rejected.csv", index=False)
    records = [done[i] for i in ids if i in done]
    pairs, elements = summarise_pairs(records)
    pairs.to_csv(out / "pairs.csv", index=False)
    elements.to_csv(out / "elements.csv", index=False)
    ranked = pairs[pairs["count"] >= min_count].head(top)
    first = records[0] if records else {}
    summary = {
        "task": task,
        "index": index,
        "strategy": strategy,
        "output": first.get("output_name"),
        "unit": first.get("unit"),
        "n_formulas": len(formulas),
        "n_explained": len(records),
        "n_rejected": len(rejected),
        "n_approximated": sum(r["method"] == "approximate" for r in records),
        "min_count": min_count,
        "top_pairs": ranked.to_dict(orient="records"),
        "top_pairs_by_total": pairs.sort_values("sum_abs", ascending=False).head(top).to_dict(orient="records"),
        "top_elements": elements[elements["count"] >= min_count].head(top).to_dict(orient="records"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_aggregate(
        pairs, out / "top_pairs.png", top=top, min_count=min_count,
        title=f"{task or 'dataset'}: element-pair {index} interactions ({strategy}, {len(records)} formulas, "
        f"{summary['output']})",
    )
    return summary
