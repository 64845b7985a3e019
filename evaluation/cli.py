"""``python evaluate.py``: run a benchmark protocol for a CrossMat model folder or training recipe,
with the baselines on the same folds in the same run."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from .baselines import DummyBaseline, MagpieRandomForest
from .records import DEFAULT_RESULTS_DIR, update_model_index
from .tasks import LLM4MAT, MATBENCH


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Official MatBench v0.1 / LLM4Mat-Bench protocols for CrossMat, baselines side by side.",
    )
    p.add_argument("--benchmark", required=True, choices=[MATBENCH, LLM4MAT])
    p.add_argument("--task", required=True, help="MatBench task (matbench_steels, ...) or LLM4Mat '<dataset>/<property>'")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="CrossMat model folder (pretrained encoder or property model) to fine-tune per fold")
    src.add_argument("--config", type=Path, help="training recipe YAML (finetune stage, or pipeline ending in one)")
    src.add_argument("--baselines-only", action="store_true", help="run only the baselines")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--variant", help="name of the CrossMat variant in the results (default: recipe name / model folder name)")
    p.add_argument("--baselines", default="dummy,rf_magpie", help="comma list from dummy,rf_magpie, or 'none'")
    p.add_argument("--folds", default=None, help="comma list of MatBench folds (default: all 5 = official protocol)")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--max-train-rows", type=int, default=None, help="subsample training rows per fold (declared deviation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, repeatable (e.g. --set train.epochs=5)")
    p.add_argument("--rf-trees", type=int, default=500)
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                   help="where <benchmark>/<task>/<variant>.json records go ('none' to skip)")
    p.add_argument("--data-dir", type=Path, default=None, help="benchmark data root (default: CROSSMAT_DATA_DIR)")
    p.add_argument("--notes", default="", help="free text stored with the results (e.g. size/epochs)")
    p.add_argument("--no-model-card", action="store_true", help="do not write eval results into --model's model card")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.model or args.config or args.baselines_only):
        print("error: give --model DIR, --config RECIPE or --baselines-only", file=sys.stderr)
        return 2
    from .crossmat_predictor import CrossMatPredictor
    from .protocol import BASELINE_NAMES, run_benchmark

    predictors = []
    try:
        if args.config:
            from training.recipe import load_recipe

            recipe = load_recipe(args.config)
            name = args.variant or recipe.get("name") or args.config.stem
            predictors.append(CrossMatPredictor(name, recipe=recipe, overrides=args.overrides))
        elif args.model:
            if not args.model.is_dir():
                raise FileNotFoundError(f"--model {args.model}: no such folder")
            name = args.variant or args.model.name
            predictors.append(CrossMatPredictor(name, model_dir=args.model, overrides=args.overrides))
        wanted = [] if args.baselines == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
        for b in wanted:
            if b not in BASELINE_NAMES:
                raise ValueError(f"unknown baseline {b!r}; choose from {BASELINE_NAMES}")
        if "dummy" in wanted:
            predictors.append(DummyBaseline())
        if "rf_magpie" in wanted:
            predictors.append(MagpieRandomForest(n_estimators=args.rf_trees, n_jobs=args.n_jobs))
        if not predictors:
            raise ValueError("nothing to run: no CrossMat model/recipe and no baselines")
        folds = None if args.folds is None else [int(f) for f in args.folds.split(",")]
        results_dir = None if str(args.results_dir) == "none" else args.results_dir
        command = "python evaluate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        summary = run_benchmark(
            args.benchmark, args.task, predictors, args.output_dir, folds=folds,
            validation_fraction=args.validation_fraction, seed=args.seed, max_train_rows=args.max_train_rows,
            results_dir=results_dir, command=command, data_root=args.data_dir, notes=args.notes,
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metric = summary["metric"]
    print(f"\n{args.benchmark} {args.task} ({metric}, folds {summary['folds']}):")
    for name, v in summary["variants"].items():
        s = v["summary"][metric]
        print(f"  {name:<24} {s['mean']:.4f} ± {s['std']:.4f}   [{v['wall_seconds']:.0f} s]")
    if args.model and not args.no_model_card and predictors and predictors[0].name in summary["variants"]:
        _card(args, summary, predictors[0].name)
    print(f"outputs: {args.output_dir}")
    return 0


def _card(args: argparse.Namespace, summary: dict, name: str) -> None:
    """Write the CrossMat variant's mean scores into the model folder's model-index."""
    v = summary["variants"][name]["summary"]
    task_type = "tabular-regression" if summary["task_type"] == "regression" else "tabular-classification"
    bench = "MatBench v0.1" if args.benchmark == MATBENCH else "LLM4Mat-Bench"
    split = "test, official 5-fold mean" if args.benchmark == MATBENCH else "test"
    entries = [
        {"task_type": task_type, "dataset_type": f"{args.benchmark}/{args.task}", "dataset_name": f"{bench} {args.task}",
         "dataset_split": split, "metric_type": m, "metric_name": m, "metric_value": round(s["mean"], 6),
         "source_name": "crossmat evaluate.py"}
        for m, s in v.items()
    ]
    try:
        path = update_model_index(args.model, args.model.name, entries)
        print(f"model-index updated: {path}")
    except OSError as err:
        print(f"warning: could not update the model card in {args.model}: {err}", file=sys.stderr)
