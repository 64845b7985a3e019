"""Which CHGNet energy gap tracks the heat_ref gap between the two A/B arrangements of a composition (perov_5 val
only: the 362 compositions whose both arrangements are in val, both directions = 724 rows; no test row is read).

For each val row b and its twin a (same composition, cations exchanged), the heat_ref of a is predicted as
``heat_ref(b) + factor * gap`` where gap is a CHGNet energy-per-atom difference:

* real-real: between the two real (DFT-relaxed) structures: the ceiling, needs a's structure;
* static: b's structure with its cations exchanged, as is, minus b's structure;
* volume scan: the same, each at its best isotropic cell size (``scan_energy``);
* relaxed: a free CHGNet relaxation (cell + positions, FIRE, 100 steps, fmax 0.1) of both, on a seeded subset.

    python benchmarks/explicit_transfer/twin_gap_study.py > benchmarks/explicit_transfer/twin_gap_study.log
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))

from run_matbench_perovskites_stack import GAP_FACTORS, scan_energy, swapped  # noqa: E402
from run_train_templates import load  # noqa: E402

from crossmat.explicit_transfer.data import composition_key  # noqa: E402
from crossmat.explicit_transfer.potentials import get_encoder  # noqa: E402

RELAX_PAIRS = 60


def report(name: str, gap: np.ndarray, y_b: np.ndarray, y_a: np.ndarray) -> None:
    corr = np.corrcoef(gap, y_a - y_b)[0, 1]
    maes = " ".join(f"{a:g}:{np.abs(y_b + a * gap - y_a).mean():.3f}" for a in GAP_FACTORS)
    print(f"{name:28s} rows {len(gap):4d}  corr {corr:.3f}  MAE by factor {maes}", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    enc = get_encoder("chgnet")
    val = load("val")
    val["key"] = composition_key(val.formula)
    y = val.heat_ref.to_numpy()
    pairs = [tuple(idx) for idx in val.groupby("key").indices.values() if len(idx) == 2]
    a = np.array([p[k] for p in pairs for k in (0, 1)])
    b = np.array([p[1 - k] for p in pairs for k in (0, 1)])
    print(f"{len(pairs)} compositions with both arrangements in val; mean |heat_ref gap| "
          f"{np.abs(y[a] - y[b]).mean():.3f} eV/atom (the error of answering with the twin's value)")
    t = time.time()
    real = np.asarray(enc(val.structure.tolist(), batch_size=256)[1], dtype=np.float64)
    structs = [val.structure[i] for i in b]
    swaps = [swapped(s) for s in structs]
    static = np.asarray(enc(swaps, batch_size=256)[1], dtype=np.float64) - real[b]
    scanned = scan_energy(swaps) - scan_energy(structs)
    print(f"static + scan energies: {time.time() - t:.0f} s")
    report("real-real (ceiling)", real[a] - real[b], y[b], y[a])
    report("static swap", static, y[b], y[a])
    report("volume-scanned swap", scanned, y[b], y[a])
    sub = np.random.default_rng(0).choice(len(a), RELAX_PAIRS, replace=False)
    t = time.time()
    relaxed = np.array([enc.relax(swaps[i], steps=100, fmax=0.1)[1] - enc.relax(structs[i], steps=100, fmax=0.1)[1]
                        for i in sub])
    print(f"relaxations: {time.time() - t:.0f} s for {2 * RELAX_PAIRS}")
    report("relaxed swap (subset)", relaxed, y[b][sub], y[a][sub])
    report("volume-scanned (same subset)", scanned[sub], y[b][sub], y[a][sub])


if __name__ == "__main__":
    main()
