"""The built wheel, installed into a fresh virtualenv and run from an empty folder: the wheel's code runs,
not the checkout's.

1. ``pip wheel --no-deps --no-build-isolation`` builds the wheel from a copy of what the package is made of
   (``pyproject.toml``, ``README.md``, ``crossmat/`` and the part folders; the checkout gets no ``build/``).
2. The wheel holds one top-level name, ``crossmat`` (plus its ``.dist-info``), the shipped recipes, the shipped
   backbone, the model-card templates and the app; its metadata requires no extra's package unconditionally.
3. ``python -m venv --without-pip`` makes a fresh virtualenv and ``pip --python VENV install --no-deps`` puts
   the wheel into it. What is shared: the dependencies only. A ``.pth`` file adds the running interpreter's
   site-packages (torch, transformers, ... already installed there) to the venv's ``sys.path`` as plain
   directories, so the ``.pth`` files inside them are not run: the editable install of the checkout
   (``__editable__*crossmat*``) stays inactive, and the venv's own site-packages, where the wheel went,
   comes first. Installing torch and the rest afresh would take many minutes and test pip, not the wheel.
4. From an empty temporary folder (no ``PYTHONPATH``): ``crossmat.load_model('crossmat-imkt-mp-small')`` and
   the app's ``build_app`` on a tiny model in one process (every ``crossmat`` module it loaded is inside the
   venv), ``crossmat evaluate`` on 200 real MatBench rows with a tiny training budget, ``crossmat train
   --help`` and ``crossmat app --help``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from crossmat import PARTS

from .test_inference_support import make_property_model

REPO = Path(__file__).resolve().parents[1]
EXTRA_ONLY = ("matgl", "chgnet", "captum", "shapiq", "gradio", "datasets", "accelerate", "peft", "evaluate",
              "matminer", "scikit-learn", "elementembeddings", "pyarrow")
TINY_EVAL = ["--set", "train.max_steps=6", "--set", "train.batch_size=32", "--rf-trees", "5"]  # default recipe, 6 steps

IN_VENV = """
import importlib, json, sys
import crossmat
model = crossmat.load_model("crossmat-imkt-mp-small")
from crossmat.configs import recipe_path
from crossmat.inference.app import build_app
demo = build_app(sys.argv[1], explain=False)
print(json.dumps({
    "model": type(model).__name__,
    "app": type(demo).__name__,
    "version": crossmat.__version__,
    "recipe": str(recipe_path("default")),
    "files": {name: getattr(mod, "__file__", None) for name, mod in sys.modules.items()
              if name == "crossmat" or name.startswith("crossmat.")},
    "editable": [name for name in sys.modules if "editable" in name],
}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("wheel-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for part in ("crossmat", *PARTS):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
         cwd=src, env=dict(os.environ))
    (whl,) = dist.glob("crossmat-*.whl")
    return whl


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    outside = [n for n in names if not re.match(r"crossmat/|crossmat-[^/]+\.dist-info/", n)]
    assert not outside, f"the wheel installs names other than crossmat: {outside[:10]}"
    shipped = [p.relative_to(REPO).as_posix() for pattern in ("configs/*.yaml", "configs/accelerate/*.yaml",
                                                              "modeling/pretrained_models/*/*", "model_cards/templates/*.j2")
               for p in REPO.glob(pattern) if p.is_file()]
    assert any("pretrained_models" in s for s in shipped) and any(s.startswith("configs/accelerate/") for s in shipped)
    missing = [s for s in [*shipped, "inference/app.py", "evaluation/metrics/matbench_regression/matbench_regression.py"]
               if f"crossmat/{s}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        requires = [ln for ln in z.read(f"{dist_info}/METADATA").decode().splitlines() if ln.startswith("Requires-Dist:")]
    assert "crossmat = crossmat.cli.main:main" in entry_points
    assert "crossmat-predict = crossmat.inference.predict:main" in entry_points
    core = [ln for ln in requires if "extra ==" not in ln]
    heavy = [ln for ln in core if re.split(r"[\s<>=!~\[;(]", ln.split(":", 1)[1].strip())[0].lower() in EXTRA_ONLY]
    assert not heavy, f"the core requires packages of an extra: {heavy}"
    assert any("torch" in ln for ln in core) and any("extra == \"explain\"" in ln and "captum" in ln for ln in requires)


@pytest.mark.slow
def test_wheel_runs_from_an_empty_folder(wheel: Path, tmp_path: Path, data_dir: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=dict(os.environ))
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path, env=dict(os.environ)).stdout.strip())
    shared = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # the deps, as plain dirs
    (site / "_crossmat_test_shared_deps.pth").write_text("".join(f"{p}\n" for p in shared))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=tmp_path, env=dict(os.environ))

    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", CROSSMAT_CACHE_DIR=str(tmp_path / "cache"))
    model = make_property_model(tmp_path / "tiny-gap")

    out = json.loads(_run([str(python), "-c", IN_VENV, str(model)], cwd=work, env=env).stdout.strip().splitlines()[-1])
    assert out["model"] == "CrossMatForStructureAlignment" and out["app"] == "Blocks"
    assert out["version"] == "0.1.0" and out["editable"] == []
    assert Path(out["files"]["crossmat"]).is_relative_to(venv)
    not_from_wheel = {k: v for k, v in out["files"].items() if v and not Path(v).is_relative_to(venv)}
    assert not not_from_wheel, f"modules loaded from outside the venv: {not_from_wheel}"
    assert {"crossmat.modeling", "crossmat.inference.app"} <= set(out["files"])
    assert Path(out["recipe"]).is_relative_to(venv)

    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_expt_gap.csv.gz").iloc[:200, :3]
    df.columns = ["id", "formula", "y"]
    df.iloc[:160].to_csv(work / "train.csv", index=False)
    df.iloc[160:].to_csv(work / "test.csv", index=False)
    crossmat = str(venv / "bin" / "crossmat")
    proc = _run([crossmat, "evaluate", "--train", "train.csv", "--test", "test.csv", "--target", "y",
                 "--output-dir", "run", *TINY_EVAL], cwd=work, env=env)
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert "crossmat" in summary["variants"] and "rf_magpie" in proc.stdout  # the shipped backbone + default recipe
    assert (work / "run" / "crossmat" / "fold_0" / "model" / "config.json").is_file()

    assert "--config" in _run([crossmat, "train", "--help"], cwd=work, env=env).stdout
    assert "--model" in _run([crossmat, "app", "--help"], cwd=work, env=env).stdout
    assert sorted(p.name for p in work.iterdir()) == ["run", "test.csv", "train.csv"]
