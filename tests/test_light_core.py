"""A light core: prediction works with only the core dependencies; every other part names its extra.

The subprocess hides the extras' modules the way a machine without them looks: every ``sys.meta_path``
finder is wrapped so that it finds neither the module nor its distribution metadata (``find_spec`` returns
``None``, as transformers' availability checks expect, and ``import x`` raises ``ModuleNotFoundError``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from crossmat._extras import EXTRAS, MissingExtraError, missing_extra, needs_extra

from .test_inference_support import make_property_model

REPO = Path(__file__).resolve().parents[1]
HIDDEN = ("matgl", "chgnet", "captum", "shapiq", "matminer", "gradio", "peft", "datasets", "accelerate", "evaluate",
          "sklearn", "elementembeddings", "pyarrow", "torch_geometric")
HIDDEN_DISTRIBUTIONS = ("scikit_learn", "torch_geometric")  # distribution names that differ from the module

HIDE = textwrap.dedent(
    f"""
    import importlib.abc, sys
    HIDDEN = frozenset({HIDDEN!r})
    HIDDEN_DISTS = HIDDEN | frozenset({HIDDEN_DISTRIBUTIONS!r})

    class Hide(importlib.abc.MetaPathFinder):
        def __init__(self, finder):
            self.finder = finder
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            find = getattr(self.finder, "find_spec", None)
            return find(name, path, target) if find else None
        def find_distributions(self, *args, **kwargs):
            find = getattr(self.finder, "find_distributions", None)
            dists = find(*args, **kwargs) if find else ()
            return (d for d in dists if (d.metadata["Name"] or "").lower().replace("-", "_") not in HIDDEN_DISTS)
        def invalidate_caches(self):
            if hasattr(self.finder, "invalidate_caches"):
                self.finder.invalidate_caches()

    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
    """
)

SCRIPT = textwrap.dedent(
    """
    import contextlib, importlib, io, json, sys
    import crossmat
    from crossmat.inference.engine import FormulaPredictor

    model, out = sys.argv[1], {}
    pred = FormulaPredictor(model)
    out["predictor"] = pred.predict(["Fe2O3", "NaCl", "LiCoO2"]).values[:, 0].tolist()
    out["predict"] = crossmat.predict(model, ["Fe2O3"]).values[:, 0].tolist()
    out["backbone"] = type(crossmat.load_model("crossmat-imkt-mp-small")).__name__
    from transformers import pipeline
    out["pipeline"] = pipeline(model=model, trust_remote_code=True)("NaCl")["value"]

    from crossmat.cli.main import main
    from crossmat.inference.predict import main as predict_main
    with open("in.csv", "w") as fh:
        fh.write("id,formula\\na,Fe2O3\\nb,Xx2\\nc,NaCl\\n")
    out["cli"] = main(["predict", "--model", model, "--input", "in.csv", "--output", "out.csv", "--no-progress"])
    out["crossmat_predict"] = predict_main(["--model", model, "--input", "in.csv", "--output", "out2.csv",
                                            "--no-progress"])
    out["csv"] = open("out.csv").read().splitlines()

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out["explain_rc"] = main(["explain", "--model", model, "--formula", "NaCl", "--out", "expl"])
        out["parquet_rc"] = predict_main(["--model", model, "--input", "in.csv", "--output", "out.parquet"])
    out["stderr"] = err.getvalue()
    try:
        importlib.import_module("crossmat.interpretability")
    except ImportError as exc:
        out["explain_error"] = [type(exc).__name__, str(exc)]
    out["loaded"] = sorted({m.partition(".")[0] for m in sys.modules} & set(HIDDEN))
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_property_model(tmp_path_factory.mktemp("light") / "tiny-gap")


def test_prediction_needs_no_extra(tiny_model: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(REPO), PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", HIDE + SCRIPT, str(tiny_model)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [], f"prediction imported modules of an extra: {out['loaded']}"
    assert len(out["predictor"]) == 3 and out["predict"][0] == pytest.approx(out["predictor"][0], abs=1e-5)
    assert out["pipeline"] == pytest.approx(out["predictor"][1], abs=1e-5)
    assert out["backbone"] == "CrossMatForStructureAlignment"
    assert out["cli"] == 0 and out["crossmat_predict"] == 0
    assert out["csv"][0] == "id,formula,predicted_band_gap,error" and len(out["csv"]) == 4
    assert "unknown element 'Xx'" in out["csv"][2]
    assert out["explain_rc"] == 1 and out["parquet_rc"] == 1
    assert ("crossmat explain: error: crossmat explain (crossmat.interpretability) needs the [explain] extra: "
            "pip install 'crossmat[explain]' (missing module shapiq)") in out["stderr"]
    assert "needs the [parquet] extra: pip install 'crossmat[parquet]' (missing module pyarrow)" in out["stderr"]
    assert out["explain_error"][0] == "MissingExtraError" and "[explain] extra" in out["explain_error"][1]


def test_needs_extra_names_the_extra_and_the_module() -> None:
    with pytest.raises(MissingExtraError, match=r"^crossmat app needs the \[app\] extra: pip install "
                                                r"'crossmat\[app\]' \(missing module no_such_gui\)$") as info:
        with needs_extra("app", "crossmat app"):
            import no_such_gui.widgets  # noqa: F401
    assert isinstance(info.value, ImportError) and info.value.name == "no_such_gui"
    with pytest.raises(ModuleNotFoundError) as bug, needs_extra("train", "x"):  # our own module: a bug, unchanged
        import crossmat.no_such_part  # noqa: F401
    assert not isinstance(bug.value, MissingExtraError)
    with pytest.raises(ValueError, match="unknown extra"):
        missing_extra("gpu", "x", "y")


def test_extras_match_pyproject() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) - {"all", "dev"} == set(EXTRAS)
    assert extras["all"] == [f"crossmat[{','.join(EXTRAS)}]"]
    assert "crossmat[all]" in extras["dev"]
