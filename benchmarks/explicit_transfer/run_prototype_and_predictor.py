"""perov_5 exKT benchmark: prototype-substitution CSP (match rate / RMSE at n=1, n=20, validity, speed) and
structure-aware heat_ref predictor MAE on real vs generated test structures.

    python benchmarks/explicit_transfer/run_prototype_and_predictor.py --stage csp       # -> results_csp_prototype.json
    python benchmarks/explicit_transfer/run_prototype_and_predictor.py --stage property  # -> results_property.json

Generator/predictor are fit on perov_5 ``val`` only; everything is evaluated on ``test`` (disjoint formulas).
CSP matching (pymatgen StructureMatcher, ~50 ms per pair on an idle core) runs on seeded random subsets of test,
and the property MAE on a seeded subset of test (sizes are flags; the shared 2-core machine was heavily loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from crossmat.explicit_transfer import PrototypeGenerator, rank_candidates, train_structure_predictor  # noqa: E402
from crossmat.explicit_transfer.cif_validation import validate_structure  # noqa: E402
from crossmat.explicit_transfer.csp_metrics import CSP_MATCHER_KWARGS, csp_metrics  # noqa: E402
from crossmat.explicit_transfer.data import load_perov5  # noqa: E402
from crossmat.explicit_transfer.potentials import crystal_features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["csp", "property"], required=True)
    ap.add_argument("--csp-subset", type=int, default=200)
    ap.add_argument("--aflow-subset", type=int, default=100)
    ap.add_argument("--property-test-subset", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    torch.set_num_threads(1)
    res: dict = {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU",
                 "matcher": CSP_MATCHER_KWARGS, "seed": args.seed}
    t0 = time.time()
    val, test = load_perov5("val"), load_perov5("test")
    print(f"loaded {len(val)} val / {len(test)} test in {time.time() - t0:.0f}s", flush=True)
    templates = [(f"perov5-val:{m}", s) for m, s in zip(val.material_id, val.structure, strict=True)]
    generator = PrototypeGenerator(templates=templates)
    if args.stage == "csp":
        res["sizes"] = {"val_templates": len(val), "test": len(test), "csp_subset": args.csp_subset,
                        "aflow_only_subset": args.aflow_subset}
        res["csp"] = run_csp(args, test, generator)
        res["total_s"] = time.time() - t0
        Path(args.out, "results_csp_prototype.json").write_text(json.dumps(res, indent=2))
        return
    res["sizes"] = {"val_train": len(val), "test_total": len(test), "property_test_subset": args.property_test_subset}
    res["property_heat_ref_mae_eV_per_atom"] = run_property(args, val, test, generator)
    res["total_s"] = time.time() - t0
    Path(args.out, "results_property.json").write_text(json.dumps(res, indent=2))


def run_csp(args: argparse.Namespace, test, generator: PrototypeGenerator) -> dict:
    """Match rate / RMSE at n=1 and n=20, validity, speed on seeded random test subsets."""
    sub_all = test.sample(n=min(args.csp_subset, len(test)), random_state=args.seed).reset_index(drop=True)
    csp: dict = {}
    for name, gen, n_sub in [("prototype[aflow+val]", generator, args.csp_subset),
                             ("prototype[aflow only]", PrototypeGenerator(), args.aflow_subset)]:
        sub = sub_all.head(n_sub)
        truths = sub.structure.tolist()
        t = time.time()
        batch = gen.generate(sub.formula.tolist(), 20)
        dt = time.time() - t
        structs = [[c.structure for c in row] for row in batch]
        n_struct = sum(len(r) for r in structs)
        valid = [validate_structure(s, f).valid for r, f in zip(structs, sub.formula, strict=True) for s in r]
        m = csp_metrics(structs, truths, ks=(1, 20), progress=False)
        m.update({"ranking": "chemical similarity", "structures_per_s": n_struct / dt, "validity": float(np.mean(valid)),
                  "failures": len(batch.failures), "candidates_per_formula": n_struct / len(sub)})
        csp[name] = m
        print(name, m, flush=True)
        if name == "prototype[aflow+val]":
            t = time.time()
            ranked = rank_candidates(batch, potential="chgnet", batch_size=128)
            dt = time.time() - t
            m2 = csp_metrics([[c.structure for c in row][:1] for row in ranked], truths, ks=(1,))
            m2.update({"ranking": "CHGNet energy per atom (20 candidates, unrelaxed)",
                       "ranking_structures_per_s": n_struct / dt})
            csp[name + " + CHGNet rank"] = m2
            print(name + " + CHGNet rank", m2, flush=True)
    return csp


def run_property(args: argparse.Namespace, val, test, generator: PrototypeGenerator) -> dict:
    """Frozen CHGNet crystal features -> MLP trained on val real structures; MAE on real vs generated test."""
    test = test.sample(n=min(args.property_test_subset, len(test)), random_state=args.seed).reset_index(drop=True)
    t = time.time()
    f_val = crystal_features(val.structure.tolist(), "chgnet", batch_size=128)
    f_test = crystal_features(test.structure.tolist(), "chgnet", batch_size=128)
    gen_full = generator.generate(test.formula.tolist(), 1)
    ok = np.array([len(r) > 0 for r in gen_full])
    f_gen = crystal_features([r[0].structure for r in gen_full if r], "chgnet", batch_size=128)
    print(f"features in {time.time() - t:.0f}s", flush=True)
    y_val, y_test = val.heat_ref.to_numpy(), test.heat_ref.to_numpy()
    out_dir = Path(tempfile.mkdtemp()) / "perov5-heat_ref-chgnet-mlp"
    model = train_structure_predictor(f_val, y_val, out_dir, target_name="heat_ref", target_unit="eV/atom",
                                      epochs=args.epochs, seed=args.seed, datasets=["perov_5"])
    p_real = model.predict_features(f_test)[:, 0]
    p_gen = model.predict_features(f_gen)[:, 0]
    out = {
        "train_mean_baseline (test)": float(np.abs(y_test - y_val.mean()).mean()),
        "structure predictor on real test structures (upper bound)": float(np.abs(p_real - y_test).mean()),
        "exKT: predictor on prototype[aflow+val] top-1 (similarity) structures": float(np.abs(p_gen - y_test[ok]).mean()),
        "n_test": len(test),
        "n_generated": int(ok.sum()),
        "predictor_epochs": args.epochs,
    }
    print(out, flush=True)
    return out


if __name__ == "__main__":
    main()
