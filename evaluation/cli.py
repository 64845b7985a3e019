"""``python evaluate.py`` / ``crossmat evaluate``: CrossMat (a model folder or training recipe) and the
baselines on the same splits in the same run: the user's own files, MatBench v0.1 or LLM4Mat-Bench."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .baselines import DummyBaseline, MagpieRandomForest
from .own_data import CSV, TARGET_TRANSFORMS, TASK_TYPES
from .records import update_model_index
from .tasks import LLM4MAT, MATBENCH

if TYPE_CHECKING:
    from .crossmat_predictor import CrossMatPredictor

DEFAULT_RECIPE = "default"  # the shipped recipe crossmat/configs/default.yaml: backbone + default fine-tuning
QUICK = ["train.epochs=10", "train.swa_epochs=1"]  # --quick: the default recipe on a tenth of its budget
SCRATCH = ["model.init_from=null"]  # --from-scratch: the same encoder from random weights

EXAMPLES = """examples:
  # your own data: CrossMat (the shipped backbone + the default recipe) + dummy + Magpie RF, one table; the
  # validation rows calibrate the uncertainty (classification: probability temperature and decision threshold)
  # and are reported
  python evaluate.py --train train.csv --validation val.csv --test test.csv --target band_gap --output-dir runs/gap
  # a first look in a tenth of the time, or the same recipe without the pretrained backbone
  python evaluate.py --train train.csv --test test.csv --target band_gap --output-dir runs/gap_quick --quick
  # MatBench v0.1, official 5 folds, a recipe and the baselines in the same run
  python evaluate.py --benchmark matbench --task matbench_steels --config benchmarks/matbench/recipes/crossmat_scratch.yaml --output-dir runs/steels
  # baselines only; also record the results for BENCHMARKS.md (only when asked)
  python evaluate.py --benchmark matbench --task matbench_steels --baselines-only --output-dir runs/steels --results-dir benchmarks/results
"""


def build_parser(prog: str = "evaluate.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate CrossMat with the baselines in the same run: your own train/validation/test files "
        "(--train/--test/--target), or the official MatBench v0.1 / LLM4Mat-Bench protocols. "
        "Results go to --output-dir; nothing is written into the repository unless --results-dir says so.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--benchmark", choices=[MATBENCH, LLM4MAT, CSV],
                   help="matbench, llm4mat, or csv = your own files (default: csv when --train is given)")
    p.add_argument("--task", help="MatBench task (matbench_steels, ...), LLM4Mat '<dataset>/<property>', or a name "
                   "for your own data (default: the target column)")
    own = p.add_argument_group("your own data (--benchmark csv)")
    own.add_argument("--train", type=Path, help="training rows (.csv/.csv.gz/.parquet/.jsonl)")
    own.add_argument("--validation", type=Path, help="held-out rows that never train the model: they calibrate the "
                     "uncertainty of every prediction (classification: the probability temperature and the decision "
                     "threshold) and their metrics are "
                     "reported (default: a --validation-fraction of --train is held out)")
    own.add_argument("--test", type=Path, help="test rows, scored once at the end")
    own.add_argument("--target", help="target column (numbers: regression; 0/1, true/false or text labels such as "
                     "metal / insulator or cubic / hexagonal / ...: classification)")
    own.add_argument("--formula-column", default="formula")
    own.add_argument("--id-column", default=None, help="row id column (default: split-row number)")
    own.add_argument("--task-type", default="auto", choices=list(TASK_TYPES),
                     help="auto (default): 0/1-like or text labels are classification, numbers regression; "
                     "classification also makes whole numbers (1..7, space-group numbers) classes")
    own.add_argument("--positive-label", default=None, help="a target column of two text labels (metal / insulator) "
                     "is a classification task: this label is class 1, whose probability is predicted (default: the "
                     "label that sorts last)")
    own.add_argument("--unit", default=None, help="unit of the target (carried into the model config and card)")
    own.add_argument("--target-transform", choices=TARGET_TRANSFORMS, default=None,
                     help="model and score log10(target) (log10_abs: log10(|target|)) for every predictor, for a "
                          "target spanning orders of magnitude (conductivities, lifetimes); rows where it is "
                          "undefined are left out and reported")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="CrossMat model folder (pretrained encoder or property model) to fine-tune per fold")
    src.add_argument("--config", help=f"training recipe YAML (finetune stage, or pipeline ending in one); "
                     f"default: the shipped {DEFAULT_RECIPE} recipe")
    src.add_argument("--baselines-only", action="store_true", help="run only the baselines")
    p.add_argument("--quick", action="store_true", help="a first look: the default recipe with 10 epochs per member instead of 100 "
                   "(about 10x faster, less accurate)")
    p.add_argument("--from-scratch", action="store_true", help="train the default recipe's encoder from random weights "
                   "instead of the shipped pretrained backbone crossmat-imkt-mp-small")
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
    p.add_argument("--results-dir", type=Path, default=None,
                   help="also write <benchmark>/<task>/<variant>.json result records here (default: none; the "
                   "repository's records are benchmarks/results)")
    p.add_argument("--data-dir", type=Path, default=None, help="benchmark data root (default: CROSSMAT_DATA_DIR)")
    p.add_argument("--notes", default="", help="free text stored with the results (e.g. size/epochs)")
    p.add_argument("--no-model-card", action="store_true", help="do not write eval results into --model's model card")
    return p


def crossmat_predictor(args: argparse.Namespace) -> CrossMatPredictor | None:
    """The CrossMat row of the table: the same default recipe (``DEFAULT_RECIPE``) for your own files and for
    the benchmarks unless ``--config`` or ``--model`` says otherwise; ``--quick`` / ``--from-scratch`` add their
    documented overrides. ``None`` with ``--baselines-only``."""
    from .crossmat_predictor import CrossMatPredictor

    if args.config:
        from crossmat.training.recipe import load_recipe

        recipe = load_recipe(args.config)
        extra = (QUICK if args.quick else []) + (SCRATCH if args.from_scratch else [])
        name = args.variant or variant_name(recipe, args)
        return CrossMatPredictor(name, recipe=recipe, overrides=extra + list(args.overrides))
    if args.model:
        if not args.model.is_dir():
            raise FileNotFoundError(f"--model {args.model}: no such folder")
        if args.from_scratch:
            raise ValueError("--from-scratch trains from random weights; it cannot start from --model")
        name = (args.variant or args.model.name) + ("_quick" if args.quick else "")
        return CrossMatPredictor(name, model_dir=args.model, overrides=(QUICK if args.quick else []) + list(args.overrides))
    return None



def variant_name(recipe: dict, args: argparse.Namespace) -> str:
    """How the table names the CrossMat row: what it is, not the recipe file it came from (``crossmat`` = the
    shipped backbone + the default recipe; ``_quick`` / ``_scratch`` for the documented options)."""
    base = "crossmat" if args.config == _default_path() else str(recipe.get("name") or Path(args.config).stem)
    return base + ("_quick" if args.quick else "") + ("_scratch" if args.from_scratch else "")


def _default_path() -> Path:
    from crossmat.dataset_builders.paths import resolve_recipe

    return resolve_recipe(DEFAULT_RECIPE)


def describe_predictors(predictors: list, args: argparse.Namespace) -> list[str]:
    """One line per table row saying what the predictor is."""
    out = []
    for p in predictors:
        if p.name in ("dummy", "rf_magpie"):
            what = ("the training-set mean (regression) or majority class" if p.name == "dummy" else
                    f"a random forest ({args.rf_trees} trees) on Magpie composition features")
        elif getattr(p, "model_dir", None) is not None:
            what = f"fine-tuned from the model folder {p.model_dir}"
        else:
            from crossmat.training.recipe import apply_overrides

            full = apply_overrides(p.recipe, p.overrides)
            stage = full.get("pipeline", [full])[-1]
            init = (stage.get("model") or {}).get("init_from")
            epochs = (stage.get("train") or {}).get("epochs")
            src = f"the pretrained backbone {init}" if init else "random weights (from scratch)"
            recipe = "the default recipe" if args.config == _default_path() else f"the recipe {args.config}"
            members = int(((stage.get("model") or {}).get("config") or {}).get("ensemble_size", 1))
            budget = f"{members} members x {epochs} epochs" if members > 1 else f"{epochs} epochs"
            what = f"CrossMat from {src}, fine-tuned with {recipe} ({budget})"
        out.append(f"[crossmat] {p.name}: {what}")
    return out


def held_out_report(summary: dict) -> list[str]:
    """What the held-out validation rows did for each CrossMat row: their metrics and the calibration (or that
    there were none)."""
    from .protocol import BASELINE_NAMES

    lines = []
    for name, v in summary["variants"].items():
        held_rows = v.get("validation") or ([{}] * len(summary["folds"]) if name not in BASELINE_NAMES else [])
        for fold, held in zip(summary["folds"], held_rows, strict=False):
            val = held.get("validation", {})
            cal = held.get("calibration", {})
            keys = [k for k in ("mae", "rmse", "r2", "roc_auc", "accuracy", "coverage_1sigma", "coverage_2sigma") if k in val]
            msg = ", ".join(f"{k} {val[k]:.4g}" for k in keys)
            if "scale" in cal:
                spread = " with the members' spread" if cal.get("spread_weight") else ""
                msg += (f"; they calibrated the standard deviation of every prediction (k={cal['k']:.0f} nearest "
                        f"held-out rows{spread}, scale {cal['scale']:.3g})")
                if "interval_multiplier_95" in cal:
                    msg += (f" and the 68% / 95% prediction intervals (± {cal['interval_multiplier_68']:.3g} / "
                            f"± {cal['interval_multiplier_95']:.3g} std)")
            if "temperature" in cal:
                msg += (f"; they set the probability temperature {cal['temperature']:.3g} (log loss "
                        f"{cal['log_loss_before_temperature']:.3g} -> {cal['log_loss_after_temperature']:.3g})")
            if "decision_threshold" in cal:
                positive = (summary.get("class_labels") or ["0", "1"])[1]  # the class named by --positive-label
                msg += f"; they set the decision threshold P({positive}) >= {cal['decision_threshold']:.3f}"
            if "prior_exponent" in cal:  # a classifier of three classes or more
                alpha = cal["prior_exponent"]
                msg += ("; they kept the most probable class as the label (balanced accuracy)" if alpha == 0 else
                        f"; they chose the label rule for balanced accuracy: the largest P(class) / training "
                        f"frequency{'' if alpha == 1 else f' ** {alpha:g}'}")
            blend = held.get("forest_blend")
            if blend and "skipped" not in blend:  # a skipped blend (e.g. a regression model) said why in training
                msg += (f"; they chose CrossMat's weight {blend['weight']:.1f} in the blend with a {blend['features']} "
                        "forest (out-of-bag on these rows)" if blend["installed"] else
                        f"; they kept the {blend['features']} forest out of the blend (weight 1.0)")
            same = held.get("same_composition")
            if same and same.get("installed"):
                msg += (f"; they chose the same-composition correction's weight {same['weight']:.2f} (on the "
                        f"{same['validation_rows_with_composition']} rows whose composition has training rows)")
            elif same and "best_weight" in same:  # enough rows, but the best weight was not significant
                msg += (f"; on the {same['validation_rows_with_composition']} rows whose composition has training rows "
                        f"the best same-composition weight {same['best_weight']:.2f} did not beat no correction by "
                        f"{same['min_se']:g} SE: no correction")
            elif same:
                msg += (f"; {same['validation_rows_with_composition']} of them share their composition with a training "
                        "row: no same-composition correction")
            prefix = f"fold {fold} " if len(summary["folds"]) > 1 else ""
            n_held = summary["n_validation"][summary["folds"].index(fold)]
            if not n_held:
                lines.append(f"{name} {prefix}had no held-out validation rows (--validation-fraction 0 and no "
                             "--validation file): nothing calibrated its uncertainty or guarded its final weights")
                continue
            if not held:  # a recipe that reports nothing about its validation rows
                continue
            if summary.get("task_type") == "regression" and "rows" in cal and "scale" not in cal:
                msg += "; they were too few to calibrate the standard deviation (the coverage columns use the raw spread)"
            lines.append(f"{name} {prefix}validation ({n_held} held-out rows, never trained on): {msg}")
    return lines


TABLE_METRICS = {"regression": ("mae", "rmse", "r2", "mad_mae", "coverage_1sigma", "coverage_2sigma",
                                "coverage_interval68", "coverage_interval95"),
                 "classification": ("balanced_accuracy", "rocauc", "accuracy", "official_auc_rounded")}


def _table_number(x: float) -> str:
    """A metric for the console table: 4 decimals, or 5 significant digits where that would be long or all zeros."""
    return f"{x:.4f}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.5g}"


def results_table(summary: dict) -> str:
    """One console table: a row per predictor (CrossMat and baselines), mean ± std over folds of the
    task's main metrics, and wall time. Columns are as wide as their widest cell, so large targets stay readable."""
    variants = summary["variants"]
    first = next(iter(variants.values()))["summary"]
    cols = [m for m in TABLE_METRICS[summary["task_type"]] if m in first]
    if summary["metric"] not in cols:
        cols.insert(0, summary["metric"])
    multi = len(summary["folds"]) > 1
    rows = {}
    for name, v in variants.items():
        rows[name] = []
        for c in cols:
            st = v["summary"].get(c)
            rows[name].append("-" if st is None else f"{_table_number(st['mean'])} ± {_table_number(st['std'])}"
                              if multi else _table_number(st["mean"]))
    width = max(len("predictor"), *(len(n) for n in variants)) + 2
    cells = [max(len(c), *(len(r[i]) for r in rows.values())) + 3 for i, c in enumerate(cols)]
    lines = ["predictor".ljust(width) + "".join(c.upper().rjust(w) for c, w in zip(cols, cells, strict=True))
             + "time".rjust(9)]
    for name, v in variants.items():
        lines.append(name.ljust(width) + "".join(s.rjust(w) for s, w in zip(rows[name], cells, strict=True))
                     + f"{v['wall_seconds']:8.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "evaluate.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its INFO lines narrate every checkpoint file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars would break up the fold bar
    own_data = None
    if args.benchmark is None:
        if args.train is None:
            parser.error("give --train/--test/--target (your own data) or --benchmark matbench|llm4mat --task ...")
        args.benchmark = CSV
    if args.benchmark == CSV:
        missing = [f"--{k}" for k in ("train", "test", "target") if getattr(args, k) is None]
        if missing:
            parser.error(f"your own data needs {' '.join(missing)}")
        own_data = {"train": args.train, "validation": args.validation, "test": args.test, "target": args.target,
                    "formula_column": args.formula_column, "id_column": args.id_column,
                    "task_type": args.task_type, "unit": args.unit,
                    "positive_label": args.positive_label, "target_transform": args.target_transform}
        args.task = args.task or (f"{args.target_transform}({args.target})" if args.target_transform else args.target)
    elif args.target_transform:
        parser.error(f"--target-transform is for your own data; --benchmark {args.benchmark} scores its official target")
    elif args.train or args.test or args.validation:
        parser.error(f"--train/--validation/--test are for your own data, not --benchmark {args.benchmark}")
    elif not args.task:
        parser.error(f"--benchmark {args.benchmark} needs --task")
    if not (args.model or args.config or args.baselines_only):
        args.config = DEFAULT_RECIPE
    if args.config:
        from crossmat.dataset_builders.paths import resolve_recipe

        try:
            args.config = resolve_recipe(args.config)
        except FileNotFoundError as err:
            parser.error(str(err))
    from .protocol import BASELINE_NAMES, run_benchmark

    predictors = []
    try:
        crossmat = crossmat_predictor(args)
        if crossmat is not None:
            predictors.append(crossmat)
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
        for line in describe_predictors(predictors, args):
            print(line)
        folds = None if args.folds is None else [int(f) for f in args.folds.split(",")]
        results_dir = None if args.results_dir is None or str(args.results_dir) == "none" else args.results_dir
        command = "python evaluate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        summary = run_benchmark(
            args.benchmark, args.task, predictors, args.output_dir, folds=folds,
            validation_fraction=args.validation_fraction, seed=args.seed, max_train_rows=args.max_train_rows,
            results_dir=results_dir, command=command, data_root=args.data_dir, notes=args.notes, own_data=own_data,
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished folds are kept in {args.output_dir}; rerun the same command to continue (a fold "
              "that was training resumes from its newest checkpoint)", file=sys.stderr)
        return 130
    where = f"{len(summary['folds'])} folds, mean ± std" if len(summary["folds"]) > 1 else f"{summary['n_test'][0]} test rows"
    print(f"\n{args.benchmark} {args.task} ({summary['task_type']}; {where}; headline metric {summary['metric']}):")
    print(results_table(summary))
    for line in held_out_report(summary):
        print(line)
    if args.model and not args.no_model_card and predictors and predictors[0].name in summary["variants"]:
        _card(args, summary, predictors[0].name)
    print(f"outputs: {args.output_dir} (summary.csv, summary.json, <predictor>/fold_*/predictions.csv)")
    if results_dir is not None:
        print(f"result records: {results_dir}")
    return 0


def _card(args: argparse.Namespace, summary: dict, name: str) -> None:
    """Write the CrossMat variant's mean scores into the model folder's model-index."""
    v = summary["variants"][name]["summary"]
    task_type = "tabular-regression" if summary["task_type"] == "regression" else "tabular-classification"
    bench = {MATBENCH: "MatBench v0.1", LLM4MAT: "LLM4Mat-Bench"}.get(args.benchmark, args.test.name if args.test else "")
    split = "test, official 5-fold mean" if args.benchmark == MATBENCH else "test"
    entries = [
        {"task_type": task_type, "dataset_type": f"{args.benchmark}/{args.task}", "dataset_name": f"{bench} {args.task}",
         "dataset_split": split, "metric_type": m, "metric_name": m, "metric_value": round(s["mean"], 6)}
        for m, s in v.items()
    ]
    try:
        path = update_model_index(args.model, args.model.name, entries)
        print(f"model-index updated: {path}")
    except (OSError, ValueError) as err:  # a read-only folder, a card huggingface_hub will not parse: results stand
        print(f"warning: could not update the model card in {args.model}: {err}", file=sys.stderr)
