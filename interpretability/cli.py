"""``python -m crossmat.interpretability``: explain formulas or aggregate interactions over a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from crossmat.dataset_builders.cli_flags import FlagParser
from crossmat.dataset_builders.tables import read_table
from crossmat.tokenization import FormulaError

from .aggregate import aggregate_interactions
from .attributions import BASELINES
from .explain import explain, format_table
from .interactions import APPROXIMATORS, INDICES, BudgetError
from .model_output import ModelOutputSpec, NotAPropertyModelError, load_property_model
from .players import STRATEGIES


def _read_formula_csv(path: str, column: str) -> pd.DataFrame:
    """A table (the one reader, ``dataset_builders.tables``) whose formula column is kept as written
    (``NA``/empty cells stay text, a NUL byte stays in the cell and is refused by the formula grammar)."""
    return read_table(path, text_columns=[column], required=[column], formula_column=column).frame


# the old spellings, still accepted (hidden; a notice on stderr): --out was the folder, --output the scalar
_DEPRECATED = {"--out": "--output-dir", "--output": "--explained-output", "--column": "--formula-column"}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="saved CrossMatForPropertyPrediction folder (with tokenizer)")
    p.add_argument("--output-dir", required=True, help="output folder")
    p.add_argument("--index", default="k-SII", choices=INDICES, help="Shapley interaction index (default k-SII)")
    p.add_argument("--strategy", default="mask", choices=STRATEGIES,
                   help="absent players: [MASK] their element token (keeps fractions) or remove them (renormalise)")
    p.add_argument("--budget", type=int, default=None, help="coalition evaluations per approximated formula")
    p.add_argument("--explained-output", default="auto", choices=["auto", "value", "probability", "logit"],
                   help="explained scalar: regression value (target units) or class probability/logit "
                   "(was --output)")
    p.add_argument("--target", default=None, help="which target (regression) or class is explained, by index or name "
                   "(--target metal); default: class 1 of a binary classifier, else the first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 is much faster for small models on busy/shared CPUs)")


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="python -m crossmat.interpretability", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="attributions + interactions for formulas (JSON, CSV, figures)",
                       deprecated=_DEPRECATED)
    _common(e)
    e.add_argument("--formula", action="append", default=[], help="a formula (repeatable)")
    e.add_argument("--input", help="table (.csv[.gz], .tsv, .parquet, .jsonl) with a formula column")
    e.add_argument("--formula-column", default="formula", help="name of the formula column (default: formula)")
    e.add_argument("--order", type=int, default=2, help="highest interaction order (default 2)")
    e.add_argument("--method", default="auto", choices=["auto", "exact", "approximate"])
    e.add_argument("--max-exact-players", type=int, default=12,
                   help="formulas with more elements are approximated (default 12 -> 4096 coalitions)")
    e.add_argument("--approximator", choices=sorted(APPROXIMATORS), default=None)
    e.add_argument("--baseline", choices=BASELINES, default="mask", help="integrated-gradients baseline")
    e.add_argument("--n-steps", type=int, default=64, help="integrated-gradients steps")
    e.add_argument("--format", default="png", help="figure formats, comma separated (png,svg)")
    a = sub.add_parser("aggregate", help="which element pairs interact most over a dataset", deprecated=_DEPRECATED)
    _common(a)
    a.add_argument("--input", required=True, help="table (.csv[.gz], .tsv, .parquet, .jsonl), e.g. a MatBench task file")
    a.add_argument("--formula-column", default="formula", help="name of the formula column (default: formula)")
    a.add_argument("--id-column", default=None, help="row id column (default: row number)")
    a.add_argument("--test-fold", type=int, default=None, help="keep rows whose test_fold equals this")
    a.add_argument("--limit", type=int, default=None, help="first N rows only")
    a.add_argument("--task", default=None, help="task name in the summary (default: input file name)")
    a.add_argument("--max-exact-players", type=int, default=10)
    a.add_argument("--min-count", type=int, default=10, help="rank pairs seen in at least this many formulas")
    a.add_argument("--chunk-size", type=int, default=256, help="formulas per checkpointed chunk")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        model, tokenizer = load_property_model(args.model, args.device)
        spec = ModelOutputSpec(args.explained_output, args.target)
        if args.command == "explain":
            formulas = list(args.formula)
            if args.input:
                formulas += _read_formula_csv(args.input, args.formula_column)[args.formula_column].tolist()
            if not formulas:
                raise ValueError("give --formula and/or --input")
            results = explain(
                model, tokenizer, formulas, args.output_dir, index=args.index, order=args.order, strategy=args.strategy,
                method=args.method, max_exact_players=args.max_exact_players, budget=args.budget,
                approximator=args.approximator, baseline=args.baseline, n_steps=args.n_steps, output=spec,
                formats=[f.strip() for f in args.format.split(",") if f.strip()],
            )
            for attr, inter in results:
                print(format_table(attr, inter), end="\n\n")
            print(f"wrote {len(results)} explanation(s) to {args.output_dir}")
        else:
            df = _read_formula_csv(args.input, args.formula_column)
            if args.test_fold is not None:
                df = df[df["test_fold"] == args.test_fold]
            if args.limit is not None:
                df = df.head(args.limit)
            summary = aggregate_interactions(
                model, tokenizer, df[args.formula_column].astype(str).tolist(), args.output_dir,
                ids=df[args.id_column].astype(str).tolist() if args.id_column else None,
                task=args.task or Path(args.input).name.split(".")[0], index=args.index, strategy=args.strategy,
                max_exact_players=args.max_exact_players, budget=args.budget, output=spec,
                chunk_size=args.chunk_size, min_count=args.min_count,
            )
            print(json.dumps({k: v for k, v in summary.items() if k != "top_elements"}, indent=2))
    except (FormulaError, NotAPropertyModelError, BudgetError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:  # full / read-only disk while writing the output, or an unreadable input
        from crossmat.dataset_builders.common import describe_write_error

        msg = describe_write_error(err, args.output_dir)
        if msg is None and isinstance(err, OSError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        if msg is None:
            raise
        print(f"error: {msg}. Files already written under {args.output_dir} are kept (aggregate resumes from its finished "
              "chunks); free space (or fix the folder) and rerun the same command", file=sys.stderr)
        return 2
    return 0
