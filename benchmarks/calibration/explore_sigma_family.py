"""Exploration: which sigma family covers held-out test rows best, chosen on the calibration rows only.

For fold models that still have their folder (weights + stored calibration rows), compute the pooled embedding of
every test formula, then for each family pick its parameters on the calibration rows (leave-one-out) and report
the test coverage. Usage: python benchmarks/calibration/explore_sigma_family.py RUN_DIR [RUN_DIR ...]
(RUN_DIR = .../crossmat/fold_k holding model/ and predictions.csv; the model folders are git-ignored, so this
needs the run folders of a fresh default-route run). Output of the 5 log_kvrh folds: explore_sigma_family.log."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

import crossmat

T1, T2 = 0.6827, 0.9545
SCALES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))


def cov(err, sig):
    return float((err <= sig).mean()), float((err <= 2 * sig).mean())


def best_scale(err, base, crit):
    r = err / np.maximum(base, 1e-12)
    c1 = (r[None] <= SCALES[:, None]).mean(1)
    c2 = (r[None] <= 2 * SCALES[:, None]).mean(1)
    loss = (c1 - T1) ** 2 + (c2 - T2) ** 2 if crit == "sq" else np.maximum(abs(c1 - T1), abs(c2 - T2))
    i = int(np.argmin(loss))
    return SCALES[i], loss[i]


def knn_base(sims, res2, k, prior, self_excl):
    s = sims.clone()
    if self_excl:
        s.fill_diagonal_(-float("inf"))
    idx = s.topk(k, dim=-1).indices
    return ((res2[idx].sum(1) + prior * res2.mean()) / (k + prior)).sqrt().numpy()


def main(run_dirs):
    for rd in run_dirs:
        model = crossmat.load_model(f"{rd}/model")
        tok = AutoTokenizer.from_pretrained(f"{rd}/model")
        pred = pd.read_csv(f"{rd}/predictions.csv")
        enc = tok(pred["formula"].tolist(), padding=True, return_tensors="pt")
        with torch.inference_mode():
            pooled = torch.cat([model.crossmat(enc["input_ids"][i:i + 512], attention_mask=enc["attention_mask"][i:i + 512]).pooler_output.float()
                                for i in range(0, len(pred), 512)])
        keys = model.uncertainty_keys.float()
        res = model.uncertainty_residuals.double()[:, 0]
        res2 = res ** 2
        cal_err = res.abs().numpy()
        test_err = (pred["target"] - pred["prediction"]).abs().to_numpy()
        sims_cal = keys @ keys.T
        sims_test = F.normalize(pooled, dim=-1) @ keys.T
        n = len(keys)
        cfg = model.config
        base_test_cur = knn_base(sims_test, res2, cfg.uncertainty_k, cfg.uncertainty_prior, False)
        print(f"\n{rd}: {n} calibration rows; current k={cfg.uncertainty_k} prior={cfg.uncertainty_prior} "
              f"scale={cfg.uncertainty_scale:.3f} -> test {cov(test_err, cfg.uncertainty_scale * base_test_cur)}")
        for crit in ("sq", "max"):
            for gammas in ((1.0,), (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)):
                best = None
                for k in [k for k in (5, 10, 20, 40, 80) if k < n]:
                    for pu in (0.0, 0.25, 0.5, 1.0, 2.0):
                        b_cal = knn_base(sims_cal, res2, k, pu * k, True)
                        ref = np.median(b_cal)
                        for g in gammas:
                            bc = ref * (b_cal / ref) ** g
                            s, loss = best_scale(cal_err, bc, crit)
                            if best is None or loss < best[0] - 1e-12:
                                best = (loss, k, pu * k, g, s, ref)
                _, k, p, g, s, ref = best
                b_cal = knn_base(sims_cal, res2, k, p, True)
                b_t = knn_base(sims_test, res2, k, p, False)
                sig_c = s * ref * (b_cal / ref) ** g
                sig_t = s * ref * (b_t / ref) ** g
                print(f"  crit={crit:3s} gammas={len(gammas)}: k={k} prior={p:g} gamma={g} s={s:.3f} "
                      f"cal {tuple(round(x, 3) for x in cov(cal_err, sig_c))} test {tuple(round(x, 3) for x in cov(test_err, sig_t))}")


if __name__ == "__main__":
    main(sys.argv[1:])
