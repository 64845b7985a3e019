"""What any method that reads only the composition (composition models and exKT alike: one prediction per
composition) cannot beat on perov_5: test compositions listed twice in the test split (the two site orders of the
same metals) get one prediction for two targets, so their MAE is at least ``|y1 - y2| / 2`` per row. The formula as
written names the site order (perov5_written_order.py), so a method that reads it is not bound by this floor.

    PYTHONPATH=. python benchmarks/explicit_transfer/perov5_twin_floor.py   # -> perov5_twin_floor.json

Reads the test split's targets only to describe the benchmark; nothing is fit or chosen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from crossmat.dataset_builders.paths import data_dir
from crossmat.explicit_transfer.data import composition_key


def main() -> None:
    out = {}
    for target in ("heat_ref",):
        test = pd.read_csv(data_dir() / "perov_5" / "test.csv.gz", usecols=["formula", target])
        train = pd.read_csv(data_dir() / "perov_5" / "train_structures.csv.gz", usecols=["formula"])
        test["key"] = composition_key(test["formula"])
        train_keys = set(composition_key(train["formula"]))
        count = test.groupby("key")[target].transform("count")
        twins = test[count == 2]
        half_gap = twins.groupby("key")[target].agg(lambda s: abs(s.iloc[0] - s.iloc[1]) / 2)
        mean_mae = float(np.abs(test[target] - test[target].mean()).mean())
        out[target] = {
            "test_rows": len(test),
            "rows_with_twin_in_test": len(twins),
            "rows_whose_composition_is_in_train": int(test["key"].isin(train_keys).sum()),
            "floor_mae_on_twin_rows": float(half_gap.mean()),
            "floor_over_mean_baseline_on_twin_rows": float(half_gap.mean()) / mean_mae,
            "mean_baseline_mae_all_rows": mean_mae,
        }
    path = Path(__file__).with_name("perov5_twin_floor.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
