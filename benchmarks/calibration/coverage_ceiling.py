"""How far a global rescaling of sigma can take the default route's coverage (issue 22, item 3).

Reads the committed default-route fold predictions (benchmarks/matbench/runs/default_route/<task>/crossmat/
fold_k/predictions.csv: target, prediction, uncertainty; and the same route as a 2-member ensemble,
runs/default_route_ens2/<task>/crossmat_ens2, whose sigma may use the members' spread) and reports, per regression
task: the coverage within 1 and 2 sigma as shipped, the share of exact predictions (|error| = 0: a target at the
bound the predictions are clipped to, covered by any sigma), the shape of the normalised errors z = |error| / sigma (q95/q68 is 2.0 for a Gaussian)
and the best coverage that any single factor on sigma could reach *if it were chosen on the test rows* (an
oracle bound, not a method: the smallest max deviation from 0.683 / 0.954). A second oracle has two degrees of
freedom, ``a * (sigma / median sigma) ** b`` with the power b in [0.25, 4]: can a sigma that spreads more (or less)
across rows reach both levels at once? Also for today's default (runs/default_route_ens2_e100).

    python benchmarks/calibration/coverage_ceiling.py > benchmarks/calibration/coverage_ceiling.txt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

RUNS = Path(__file__).parents[1] / "matbench" / "runs"
ROUTES = {"default_route": "crossmat", "default_route_ens2": "crossmat_ens2",
          "default_route_ens2_e100": "crossmat_ens2_e100"}  # folder -> predictor
T1, T2 = 0.6827, 0.9545
FACTORS = np.exp(np.linspace(np.log(0.2), np.log(10.0), 800))
POWERS = np.linspace(0.25, 4.0, 31)


def _best_factor(z: np.ndarray, factors: np.ndarray = FACTORS) -> tuple[float, float, float, float]:
    """(factor, cov1, cov2, max deviation) of the single factor on sigma closest to both Gaussian levels."""
    o1 = (z[None] <= factors[:, None]).mean(1)
    o2 = (z[None] <= 2 * factors[:, None]).mean(1)
    dev = np.maximum(abs(o1 - T1), abs(o2 - T2))
    i = int(dev.argmin())
    return float(factors[i]), float(o1[i]), float(o2[i]), float(dev[i])


def _best_power(err: np.ndarray, sig: np.ndarray) -> tuple[float, float, float, float]:
    """(power, cov1, cov2, max deviation) of the best ``a * (sigma / median) ** b`` (a and b both oracle)."""
    pos = sig > 0
    med = float(np.median(sig[pos]))
    best = (1.0, 0.0, 0.0, np.inf)
    for b in POWERS:
        base = np.where(pos, (np.where(pos, sig, med) / med) ** b, 0.0)
        z = np.where(err == 0, 0.0, err / np.where(base > 0, base, np.nan))
        z = np.nan_to_num(z, nan=np.inf)
        q = np.quantile(z[np.isfinite(z)], np.linspace(0.3, 0.999, 700))  # the best factor sits at a z or z / 2
        _, c1, c2, dev = _best_factor(z, np.unique(np.concatenate([q, q / 2])))
        if dev < best[3]:
            best = (float(b), c1, c2, dev)
    return best


def main() -> None:
    for route, predictor in ROUTES.items():
        print(f"{route} ({predictor})")
        print(f"{'task':24s} {'rows':>5s} {'cov1':>6s} {'cov2':>6s} {'exact':>6s} {'q95/q68':>8s} | "
              "oracle factor -> cov1 cov2 maxdev | oracle a*sigma^b -> cov1 cov2 maxdev")
        for task in sorted((RUNS / route).iterdir()):
            files = sorted(task.glob(f"{predictor}/fold_*/predictions.csv"))
            frames = [pd.read_csv(f) for f in files]
            if not frames or any("uncertainty" not in f or f.uncertainty.isna().all() for f in frames):
                continue
            d = pd.concat(frames)
            if set(np.unique(d.target)) <= {0, 1}:  # a classifier's spread of P(1) is no sigma of a target
                continue
            err, sig = (d.target - d.prediction).abs().to_numpy(), d.uncertainty.to_numpy()
            c1, c2 = (err <= sig).mean(), (err <= 2 * sig).mean()
            zero = (err == 0) & (sig == 0)  # exact predictions with sigma 0 (clipped at a bound): covered
            z = np.where(zero, 0.0, err / np.where(sig > 0, sig, np.nan))
            z = np.nan_to_num(z, nan=np.inf)
            factor, o1, o2, dev = _best_factor(z)
            b, p1, p2, pdev = _best_power(err, sig)
            q68, q95 = np.quantile(z, T1), np.quantile(z, T2)
            print(f"{task.name:24s} {len(d):5d} {c1:6.3f} {c2:6.3f} {(err == 0).mean():6.3f} {q95 / q68:8.2f} | "
                  f"{factor:5.2f} -> {o1:.3f} {o2:.3f} {dev:.3f} | b {b:4.2f} -> {p1:.3f} {p2:.3f} {pdev:.3f}  "
                  f"({len(files)} folds; sigma = 0 on {int((sig == 0).sum())} rows)")
        print()

if __name__ == "__main__":
    main()
