"""Copy a pretrained imKT backbone into the package (``modeling/pretrained_models/<name>``) with its card.

Run from the repo root after ``bash benchmarks/imkt/pretrain.sh imkt`` and the transfer runs:
    python benchmarks/imkt/ship_backbone.py [--arm imkt] [--name crossmat-imkt-mp-small]
After more transfer runs, refresh only the card of the already shipped weights (no pretraining folder needed):
    python benchmarks/imkt/ship_backbone.py --card-only
The card states the data, encoder and losses, and the measured downstream effect read from
``benchmarks/results/matbench/*/crossmat_default_from_<arm>.json`` against ``crossmat_default.json``
(paired over the official folds), whatever its sign.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import yaml
from huggingface_hub import ModelCard

from crossmat.model_cards import write_model_card
from crossmat.modeling.pretrained import SHIPPED

ROOT = Path(__file__).resolve().parents[2]
# weights, config and tokenizer only: the package's own modeling code loads them (no second copy of the code)
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def measured_effect(arm: str) -> list[str]:
    """One line per task: the arm vs the scratch default recipe and vs the MLM-only arm, paired over folds."""
    lines = []
    for task_dir in sorted((ROOT / "benchmarks" / "results" / "matbench").iterdir()):
        arm_path, base_path = task_dir / f"crossmat_default_from_{arm}.json", task_dir / "crossmat_default_from_scratch.json"
        if not base_path.is_file():  # the same-code scratch rerun when there is one, else the default record
            base_path = task_dir / "crossmat_default.json"
        if not (arm_path.is_file() and base_path.is_file()):
            continue
        a, b = json.loads(arm_path.read_text()), json.loads(base_path.read_text())
        err = (lambda r: np.asarray(r["folds"]) if r["metric"] == "mae" else 1 - np.asarray(r["folds"]))  # noqa: E731
        rel = 100 * (err(a) - err(b)) / err(b)
        text = (f"{task_dir.name} ({a['metric']}): {a['mean']:.4g} ± {a['std']:.2g} vs {b['mean']:.4g} ± {b['std']:.2g} "
                f"from scratch, paired change {rel.mean():+.1f}% ± {rel.std(ddof=1) / np.sqrt(len(rel)):.1f}% (SE)")  # fmt: skip
        mlm_path = task_dir / "crossmat_default_from_mlm.json"
        if arm != "mlm" and mlm_path.is_file():
            m = json.loads(mlm_path.read_text())
            rel_m = 100 * (err(a) - err(m)) / err(m)
            text += f"; vs the MLM-only backbone {rel_m.mean():+.1f}% ± {rel_m.std(ddof=1) / np.sqrt(len(rel_m)):.1f}%"
            seed_path = task_dir / "crossmat_default_from_mlm_seed7.json"
            if seed_path.is_file():  # the backbone-seed spread that comparison has to exceed
                s7 = json.loads(seed_path.read_text())
                rel_s = 100 * (err(s7) - err(m)) / err(m)
                text += (f" (the MLM-only backbone pretrained with another seed differs from it by "
                         f"{rel_s.mean():+.1f}% ± {rel_s.std(ddof=1) / np.sqrt(len(rel_s)):.1f}%)")
        lines.append(text)
    return lines


def shipped_provenance(dst: Path) -> tuple[list[dict], dict, int, int]:
    """Validation metrics, recipe and train/validation row counts recorded in an already shipped card
    (for ``--card-only``: the pretraining folder they came from need not exist any more)."""
    card = (dst / "README.md").read_text()
    metrics = ModelCard(card).data.to_dict()["model-index"][0]["results"]
    block = card.split("## Training procedure", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    rows = [{**m, "task_type": r["task"]["type"], "dataset_type": r["dataset"]["type"], "dataset_name": r["dataset"]["name"],
             "split": r["dataset"]["split"]} for r in metrics for m in r["metrics"]]  # fmt: skip
    counts = re.search(r"(\d+) formulas \(plus (\d+) for validation\)", card)
    if counts is None:
        raise SystemExit(f"{dst / 'README.md'} does not state its training rows; ship the backbone again")
    return rows, yaml.safe_load(block), int(counts[1]), int(counts[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", default="imkt")
    ap.add_argument("--name", default="crossmat-imkt-mp-small")
    ap.add_argument("--card-only", action="store_true", help="re-render the shipped card with the current records")
    args = ap.parse_args()
    src = ROOT / "benchmarks" / "_work" / "imkt" / "backbones" / args.arm
    dst = ROOT / "modeling" / "pretrained_models" / SHIPPED[args.name][0]
    if args.card_only:
        metrics, recipe, train_rows, val_rows = shipped_provenance(dst)
    else:
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for name in FILES:
            shutil.copyfile(src / name, dst / name)  # contents only (no 0600 modes into the wheel)
        info = json.loads((src / "training_info.json").read_text())
        metrics = [{"type": k, "value": v, "task_type": "feature-extraction", "dataset_type": "mp_structures", "dataset_name": "Materials Project "
                    "structures (leakage-free formulas), 5% validation", "split": "validation", "name": f"validation {k}"}
                   for k, v in info["metrics"].get("validation", {}).items()]  # fmt: skip
        recipe = yaml.safe_load((src / "recipe.yaml").read_text())
        train_rows, val_rows = info["data"]["rows"]["train"], info["data"]["rows"].get("validation", 0)
    effect = measured_effect(args.arm) or ["not measured yet"]
    write_model_card(
        dst, kind="clm-imkt", metrics=metrics, model_name=args.name, repo_id=SHIPPED[args.name][1],
        recipe=recipe,
        description=(
            "A small CrossMat formula encoder (hidden 128, 3 layers, frozen mat2vec element vectors, sinusoid fraction "
            "tables: the encoder of the default fine-tuning recipe) pretrained with imKT at Materials Project scale: "
            "masked-element modelling plus an InfoNCE alignment of its pooled embedding onto the z-scored CHGNet crystal "
            "features of each formula's lowest-energy Materials Project structure. Ships inside the `crossmat` package: "
            f"`model.init_from: {args.name}` in a recipe, or `modeling.pretrained.resolve_model_path('{args.name}')`.\n\n"
            "Measured downstream effect (the unchanged default fine-tuning recipe started from this backbone, official "
            "MatBench folds, `bash benchmarks/imkt/run_transfer.sh`):\n\n" + "\n".join(f"- {e}" for e in effect)
        ),
        training_data=(
            f"{train_rows} formulas (plus {val_rows} for validation): "
            "every reduced formula of the 54,629 Materials Project structures in the CrossMat shared data that occurs in "
            "none of the MatBench tasks steels, expt_gap, expt_is_metal, glass, jdft2d, phonons, dielectric, log_gvrh, "
            "log_kvrh, perovskites (built by `bash benchmarks/imkt/build_data.sh`). No property labels."
        ),
        leakage_notes=[
            "Every formula of the 10 MatBench tasks listed under training data (all folds) was removed before "
            "pretraining, so the backbone can be evaluated on any fold of those tasks. Do not evaluate it on "
            "matbench_mp_e_form, mp_gap or mp_is_metal: their formulas were not removed.",
            "The alignment targets come from CHGNet, which was trained on MPtrj (Materials Project relaxation "
            "trajectories: energies, forces, stresses, magnetic moments). MatBench structure tasks are Materials "
            "Project materials too, so CHGNet saw DFT data of many of their structures (not their target properties).",
        ],
    )
    print(f"{'card of' if args.card_only else 'shipped ' + str(src) + ' ->'} {dst} ({sum(p.stat().st_size for p in dst.iterdir()) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
