"""The same-learner ceiling of structure transfer (issue 23, items 2-3): fine-tuning with the *real* structure.

The teacher-headroom measurement (``teacher_headroom.py``) read the teachers' knowledge with a shallow model on
500-4,000 labels. This is the stronger test: the unchanged default fine-tuning recipe, with the features of each
row's ground-state Materials Project structure as a second input beside the formula, read by the same property
head (issue 23 item 3's "structure head whose predicted structure features feed the property head", with the
*true* features instead of predicted ones). Whatever imKT or a structure head could carry from these teachers, this
oracle has for free; if it is not 3% better than MLM-only, no formula-only transfer of them can be.

1. ``table``: per canonical formula, the CHGNet embedding of its lowest-energy MP polymorph, the 29 pymatgen
   descriptors of it and CHGNet's six predictions (energy per atom, a formation-energy proxy, four |magnetic
   moment| statistics), each column z-scored over the table's formulas (no target read), then an indicator 1;
   a formula without an MP structure gets zeros (indicator 0). Written as ``formula, embedding`` parquet.
2. ``run``: ``python benchmarks/imkt/structure_oracle.py run --table T -- <evaluate.py arguments with
   --set model.config.structure_branch=true>``: the model's frozen structure branch (the slot of the property head's
   input that a frozen encoder fills under ``structure_branch``) is replaced by a lookup of the table by exact
   composition (``composition_keys``: Fe2O3 = Fe4O6), zero-padded to the hidden size. Training, the test folds and
   the saved checkpoints go through the package's own code; the lookup is installed in this process only.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

WORK = Path("benchmarks/_work/imkt/headroom")
TABLE = WORK / "oracle_table.parquet"


def _parts(name: str) -> pd.DataFrame:
    paths = sorted(WORK.glob(f"{name}_part*/data/*/*.parquet"))
    if not paths:
        raise SystemExit(f"no {name} embeddings under {WORK}: run the embeddings commands of "
                         "teacher_headroom.py structures (with --encoder chgnet and descriptors)")
    frame = pd.concat([pd.read_parquet(p, columns=["formula", "embedding"]) for p in paths], ignore_index=True)
    frame["key"] = frame["formula"].map(_canonical)
    return frame.drop_duplicates("key").set_index("key")


def _canonical(formula: str) -> str:
    from crossmat.tokenization import canonical_formula

    return canonical_formula(formula)


def table(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from teacher_headroom import _predictions_table

    blocks = {"chgnet": _parts("chgnet"), "descriptors": _parts("descriptors"), "predictions": _predictions_table()}
    keys = sorted(set().union(*(set(b.index) for b in blocks.values())))
    columns, names = [], []
    for name, block in blocks.items():
        mat = np.full((len(keys), len(block["embedding"].iloc[0])), np.nan)
        rows = pd.Index(keys).get_indexer(block.index)
        mat[rows] = np.stack(block["embedding"].to_numpy()).astype(np.float64)
        mean, std = np.nanmean(mat, 0), np.nanstd(mat, 0)
        z = np.nan_to_num((mat - mean) / np.where(std > 1e-8, std, 1.0), nan=0.0)  # missing -> the mean
        columns.append(np.clip(z, -6.0, 6.0))
        names.append(f"{name} {mat.shape[1]} ({int(np.isfinite(mat).all(1).sum())} formulas)")
    features = np.concatenate(columns + [np.ones((len(keys), 1))], 1).astype(np.float32)
    out = pd.DataFrame({"formula": keys, "embedding": list(features)})
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(args.output)
    print(f"{args.output}: {len(out)} formulas x {features.shape[1]} features: {', '.join(names)}, indicator 1")


class StructureLookup(torch.nn.Module):
    """Stands in for the frozen structure branch: the table's features of each row's exact composition."""

    hits = [0, 0]  # rows found in the table, rows looked up (all instances, reported at exit)

    def __init__(self, config, frame: pd.DataFrame) -> None:
        super().__init__()
        from crossmat.modeling.modeling_crossmat import composition_keys
        from crossmat.modeling.same_composition import key_multipliers
        from crossmat.tokenization import CrossMatTokenizerFast

        self.config = config
        # real CPU tensors even while from_pretrained builds the model on the meta device; plain attributes, not
        # buffers, so that checkpoints neither hold nor expect them
        with torch.device("cpu"):
            self.multipliers = key_multipliers(config.num_elements)
            ids = torch.as_tensor(CrossMatTokenizerFast()(list(frame["formula"]), padding=True)["input_ids"])
            keys = composition_keys(ids, self.multipliers, config)
            order = torch.argsort(keys)
            feats = torch.as_tensor(np.stack(frame["embedding"].to_numpy()), dtype=torch.float32)
            if feats.shape[1] > config.hidden_size:
                raise SystemExit(f"{feats.shape[1]} oracle features do not fit the hidden size {config.hidden_size}")
            self.features = torch.zeros(len(feats) + 1, config.hidden_size)  # last row: a formula with no structure
            self.features[: len(feats), : feats.shape[1]] = feats[order]
            self.keys = keys[order]

    def load_state_dict(self, *args, **kwargs):  # training/model.py copies the encoder into the branch: nothing to copy
        return None

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from crossmat.modeling.modeling_crossmat import composition_keys

        keys = composition_keys(input_ids.cpu(), self.multipliers, self.config)
        pos = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        hit = self.keys[pos] == keys
        StructureLookup.hits[0] += int(hit.sum())
        StructureLookup.hits[1] += int(hit.numel())
        rows = torch.where(hit, pos, torch.full_like(pos, len(self.keys)))
        return SimpleNamespace(pooler_output=self.features[rows].to(input_ids.device))

    def _apply(self, fn, recurse=True):  # .to(device) / .float(): the lookup stays on the CPU, moved per batch
        return self


def student(args: argparse.Namespace) -> None:
    """The oracle table with *predicted* features: a formula student (an MLP from the frozen formula features,
    fraction-weighted mat2vec + the frozen MLM-only pooled embedding, to the z-scored structure features) trained on
    the table's formulas that are not formulas of ``--task`` (label-free structure features of other compounds), then
    applied to every formula of ``--task``: each row gets predicted features and the indicator 1, as a structure head
    would give it. Held-out R^2 on a seeded 10% of the training formulas is printed."""
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    from benchmarks.imkt.probes import embed, load_encoders
    from crossmat.dataset_builders.matbench import load_task_frame

    table = pd.read_parquet(args.table)
    feats = np.stack(table["embedding"].to_numpy())[:, :-1]  # the indicator is not a target
    task_formulas = sorted(set(load_task_frame(args.task)["formula"].map(_canonical)))
    keep = ~table["formula"].isin(set(task_formulas)).to_numpy()
    encoders, _ = load_encoders("crossmat-imkt-mp-small", args.mlm_backbone)

    def inputs(formulas: list[str]) -> np.ndarray:
        vectors = embed({"imkt": encoders["mlm"]}, formulas)  # embed() names its reference encoder "imkt"
        return np.concatenate([vectors["mat2vec"], vectors["imkt"]], axis=1)

    x, y = inputs(table.loc[keep, "formula"].tolist()), feats[keep]
    scaler = StandardScaler().fit(x)
    held = np.random.default_rng(0).random(len(x)) < 0.1

    def fit(rows: np.ndarray) -> MLPRegressor:
        return MLPRegressor(hidden_layer_sizes=(256,), alpha=1e-3, early_stopping=True, max_iter=300,
                            random_state=0).fit(scaler.transform(x[rows]), y[rows])

    pred = fit(~held).predict(scaler.transform(x[held]))
    r2 = 1 - ((y[held] - pred) ** 2).sum(0) / ((y[held] - y[held].mean(0)) ** 2).sum(0).clip(1e-12)
    blocks = {"chgnet": slice(0, 64), "descriptors": slice(64, 93), "predictions": slice(93, 99)}
    print(f"student trained on {int(keep.sum())} formulas of the table outside {args.task} "
          f"({int((~keep).sum())} excluded); held-out R^2 median by block: "
          + ", ".join(f"{k} {np.median(r2[v]):.3f}" for k, v in blocks.items()), flush=True)
    out = fit(np.ones(len(x), dtype=bool)).predict(scaler.transform(inputs(task_formulas)))
    emb = np.concatenate([out, np.ones((len(out), 1))], 1).astype(np.float32)
    pd.DataFrame({"formula": task_formulas, "embedding": list(emb)}).to_parquet(args.output)
    print(f"{args.output}: predicted features of the {len(task_formulas)} formulas of {args.task}")


def run(args: argparse.Namespace, rest: list[str]) -> None:
    from crossmat.evaluation.cli import main
    from crossmat.modeling import modeling_crossmat as mc

    frame = pd.read_parquet(args.table)
    original = mc.CrossMatForPropertyPrediction.__init__

    def patched(self, config):
        original(self, config)
        if self.structure_branch is None:
            raise SystemExit("structure_oracle.py run needs --set model.config.structure_branch=true")
        self.structure_branch = StructureLookup(config, frame)

    mc.CrossMatForPropertyPrediction.__init__ = patched
    atexit.register(lambda: print(f"[oracle] {StructureLookup.hits[0]} of {StructureLookup.hits[1]} rows looked up "
                                  "had a structure", flush=True))
    print(f"[oracle] structure lookup of {len(frame)} formulas ({args.table}) in the structure-branch slot", flush=True)
    sys.exit(main(rest))


def main() -> None:
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--output", default=str(TABLE))
    st = sub.add_parser("student")
    st.add_argument("--task", default="matbench_phonons")
    st.add_argument("--table", default=str(TABLE))
    st.add_argument("--mlm-backbone", default="benchmarks/_work/imkt/backbones/mlm")
    st.add_argument("--output", default=str(WORK / "student_table_phonons.parquet"))
    r = sub.add_parser("run")
    r.add_argument("--table", default=str(TABLE))
    args = ap.parse_args(argv)
    if args.cmd == "table":
        table(args)
    elif args.cmd == "student":
        student(args)
    else:
        run(args, rest)


if __name__ == "__main__":
    main()
