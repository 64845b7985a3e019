"""Would neighbours in the *prediction* (instead of the pooled embedding) give a better-covering sigma? (issue 22)

Offline check on the committed default-route test predictions (runs/default_route/<task>/crossmat/fold_k/
predictions.csv), cross-fitted inside each fold: a seeded 30% of the test rows play the held-out rows, the other
70% are scored. Columns: ``cur`` = the shipped sigma; ``pred`` = scale x RMS |error| of the k nearest held-out rows
by predicted value (shrunk towards the global RMS like the shipped one, scale chosen on the 30% with the shipped
criterion); ``mix`` = both variances mixed with a weight chosen on the 30%. At most 3,000 rows per fold.
A Gaussian gives 0.683 / 0.954.

    PYTHONPATH=. python benchmarks/calibration/prediction_neighbours.py > benchmarks/calibration/prediction_neighbours.txt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crossmat.modeling.calibration import _best_scale, coverage

RUNS = Path(__file__).parents[1] / "matbench" / "runs" / "default_route"
TASKS = ("expt_gap", "dielectric", "jdft2d", "phonons", "steels", "log_kvrh", "log_gvrh", "perovskites")


def prediction_neighbours(pred_cal: np.ndarray, err_cal: np.ndarray, pred: np.ndarray, k: int,
                          leave_one_out: bool = False) -> np.ndarray:
    """Shrunken mean squared error of the ``k`` held-out rows nearest in predicted value (prior: k/2 rows)."""
    dist = np.abs(pred[:, None] - pred_cal[None, :])
    if leave_one_out:
        np.fill_diagonal(dist, np.inf)
    idx = np.argpartition(dist, k, axis=1)[:, :k]
    return ((err_cal[idx] ** 2).sum(1) + 0.5 * k * (err_cal**2).mean()) / (1.5 * k)


def main() -> None:
    for task in TASKS:
        scored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"cur": [], "pred": [], "mix": []}
        for path in sorted((RUNS / f"matbench_{task}").glob("crossmat/fold_*/predictions.csv")):
            d = pd.read_csv(path)
            rng = np.random.default_rng(0)
            cal = rng.random(len(d)) < 0.3
            if len(d) > 3000:
                keep = rng.random(len(d)) < 3000 / len(d)
                d, cal = d[keep], cal[keep]
            p, s = d.prediction.to_numpy(), d.uncertainty.to_numpy()
            e = np.abs(d.target.to_numpy() - p)
            k = min(40, max(5, int(cal.sum()) // 10))
            pc, pq = prediction_neighbours(p[cal], e[cal], p[cal], k, True), prediction_neighbours(p[cal], e[cal], p[~cal], k)
            scored["cur"].append((e[~cal], s[~cal]))
            scored["pred"].append((e[~cal], _best_scale(e[cal], np.sqrt(pc))[0] * np.sqrt(pq)))
            w = pc.mean() / (s[cal] ** 2).mean()  # the shipped variance on the scale of the prediction neighbours'
            fits = []
            for beta in (0.0, 0.25, 0.5, 0.75, 1.0):
                scale, loss = _best_scale(e[cal], np.sqrt((1 - beta) * w * s[cal] ** 2 + beta * pc))
                fits.append((loss, beta, scale))
            _, beta, scale = min(fits)
            scored["mix"].append((e[~cal], scale * np.sqrt((1 - beta) * w * s[~cal] ** 2 + beta * pq)))
        cells = {name: tuple(round(c, 3) for c in coverage(np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])))
                 for name, v in scored.items()}  # fmt: skip
        print(f"matbench_{task:12s} " + "  ".join(f"{name} {c1:.3f} / {c2:.3f}" for name, (c1, c2) in cells.items()))


if __name__ == "__main__":
    main()
