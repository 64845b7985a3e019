"""How far a reader walks to follow one fine-tuning run: the package files that ``crossmat.training.run_recipe``
passes through, in order.

Runs a tiny fine-tune recipe (the first 64 rows of MatBench steels, a 1-layer 32-wide model, 2 optimizer steps,
10 % validation and 20 % test formulas) once to import everything, then again under ``sys.setprofile``, and
records every Python *call* event whose code lies in one of this repository's package parts (``crossmat/``,
``training/``, ``modeling/``, ... — never tests, benchmarks or third-party code).

Definitions (on that sequence of call events) — the walk is what a reader follows who reads the training code
from ``run_recipe`` down, opening every function the training code calls, each once:

* **depth** of a call: how many package frames are on the stack, counted from ``run_recipe`` (depth 1).
* a call is **kept** when (1) it is the first call of that function (a reader reads a function once, however
  often the loop calls it), (2) its caller is a ``training/`` file (or it is ``run_recipe`` itself): calls into
  ``modeling/``, ``tokenization/``, ... are stops, the internals behind them are not, (3) it is a named function
  (no comprehension or lambda frames, not the import finder of ``crossmat/__init__.py``), and (4) its depth is
  at most ``--depth`` (default 5).
* the **walk**: the files of the kept calls in call order, consecutive calls in the same file collapsed into one
  visit.
* **stops**: the visits of the walk (``len(walk)``, the first file included).
* **files**: the number of distinct files in the walk.
* **returns**: visits to a file that was already visited and then left (``stops - files``).

Writes the numbers, the walk and the run's metrics (to compare behaviour before and after a change) to stdout;
``--output FILE`` also saves them. Run from the repository root::

    python benchmarks/training/walk.py --output benchmarks/training/walk.txt

``walk_before.txt`` is the same script on the code before the one-training-path refactor (45 stops, 14 files,
31 returns); ``walk.txt`` after it (20 / 14 / 6), with identical metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import crossmat  # noqa: E402

PACKAGE_DIRS = tuple(str(REPO / part) + os.sep for part in (*crossmat.PARTS, "crossmat"))


def recipe(csv: Path) -> dict:
    """The tiny fine-tune recipe of the walk."""
    return {
        "stage": "finetune",
        "seed": 7,
        "model": {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}},
        "data": {"train": str(csv), "target_column": "yield strength", "id_column": "id", "test_fraction": 0.2},
        "train": {"max_steps": 2, "batch_size": 16, "progress_bar": False, "trackers": "none", "log_every": 1,
                  "eval_every": 1},
    }


Event = tuple[str, int, str | None, str]  # (file, depth, caller's package file, function name)


def record(run) -> list[Event]:
    """Every package call event while ``run()`` runs (depth as in the module docstring)."""
    events: list[Event] = []
    depth_of: dict[int, tuple[int, str]] = {}  # id(frame) -> (package depth, file), for frames still running

    def profile(frame, event, arg):  # noqa: ANN001 - sys.setprofile signature
        if event != "call":
            if event == "return":
                depth_of.pop(id(frame), None)
            return
        name = frame.f_code.co_filename
        if not name.startswith(PACKAGE_DIRS):
            return
        parent = frame.f_back
        while parent is not None and id(parent) not in depth_of:
            parent = parent.f_back
        depth, caller = depth_of[id(parent)] if parent is not None else (0, None)
        file = str(Path(name).relative_to(REPO))
        depth_of[id(frame)] = (depth + 1, file)
        events.append((file, depth + 1, caller, frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return events


def walk_of(events: list[Event], max_depth: int, functions: dict[int, list[str]] | None = None) -> list[str]:
    """The collapsed file sequence of the kept calls (see the module docstring); ``functions`` collects the
    functions first called at each visit."""
    walk: list[str] = []
    read: set[tuple[str, str]] = set()
    for name, depth, caller, function in events:
        if (name, function) in read or function.startswith("<") or depth > max_depth:
            continue
        if (name, function) == ("crossmat/__init__.py", "find_spec"):
            continue
        if caller is not None and not caller.startswith("training/"):
            continue
        read.add((name, function))
        if not walk or walk[-1] != name:
            walk.append(name)
        if functions is not None:
            functions.setdefault(len(walk) - 1, []).append(function)
    return walk


def measure(walk: list[str]) -> dict[str, int]:
    """stops, files and returns of a walk (see the module docstring)."""
    seen: set[str] = set()
    returns = 0
    for name in walk:
        if name in seen:
            returns += 1
        seen.add(name)
    return {"stops": len(walk), "files": len(seen), "returns": returns}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=5, help="deepest package call kept in the walk (run_recipe = 1)")
    ap.add_argument("--output", help="also write the report to this file")
    args = ap.parse_args(argv)
    os.environ.setdefault("CROSSMAT_PROGRESS_SECONDS", "3600")
    from crossmat.dataset_builders.paths import data_dir
    from crossmat.training import run_recipe

    source = data_dir() / "matbench_v0.1" / "matbench_steels.csv.gz"
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "steels64.csv"
        pd.read_csv(source).head(64).to_csv(csv, index=False)
        run_recipe(recipe(csv), Path(tmp) / "warmup")  # imports everything outside the measurement
        out = Path(tmp) / "run"
        events = record(lambda: run_recipe(recipe(csv), out))
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        info = json.loads((out / "training_info.json").read_text())
    functions: dict[int, list[str]] = {}
    walk = walk_of(events, args.depth, functions)
    numbers = measure(walk)
    lines = [f"walk of run_recipe (tiny fine-tune, calls at package depth <= {args.depth}):",
             f"stops {numbers['stops']}, files {numbers['files']}, returns {numbers['returns']}", "",
             "deeper or shallower (depth: stops/files/returns): "
             + ", ".join(f"{d}: {m['stops']}/{m['files']}/{m['returns']}"
                         for d in (4, 5, 6, 7, 99) for m in [measure(walk_of(events, d))]), "",
             "the walk (file: functions first called there):",
             *(f"  {i:3d} {name}: {', '.join(functions[i])}" for i, name in enumerate(walk)), "",
             "metrics (behaviour check; compare before/after a refactor):",
             *(json.dumps({k: v for k, v in m.items() if k not in ("samples_per_second",)}, sort_keys=True) for m in metrics),
             json.dumps({"final": info["metrics"]}, sort_keys=True)]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
