"""Dataset builders: MatBench (all 13 tasks, official folds), LLM4Mat-Bench sample, corpus, CLI, publish."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset

from crossmat.dataset_builders import paths
from crossmat.dataset_builders.cli import main
from crossmat.dataset_builders.common import BadInputError, size_category
from crossmat.dataset_builders.corpus import build_corpus, transport_formulas
from crossmat.dataset_builders.download import DownloadError
from crossmat.dataset_builders.llm4mat import DATASETS, build_llm4mat, n_tasks
from crossmat.dataset_builders.matbench import (
    TASKS,
    build_matbench,
    load_task_frame,
    official_folds,
    split_names,
    task_info,
)
from crossmat.dataset_builders.publish import PublishError, publish_folder
from crossmat.tokenization import canonical_formula

DATA = paths.data_dir(must_exist=False)
MB_DIR = DATA / "matbench_v0.1"
L4M_DIR = DATA / "llm4mat_bench_mp_sample"
needs_data = pytest.mark.usefixtures("data_dir")  # fails (never skips) when CROSSMAT_DATA_DIR is missing
REPO = Path(__file__).resolve().parent.parent

# Official MatBench v0.1 test-fold sizes (matbench_v0.1_validation.json), folds 0..4.
OFFICIAL_TEST_FOLD_SIZES = {
    "matbench_dielectric": [953, 953, 953, 953, 952],
    "matbench_expt_gap": [921, 921, 921, 921, 920],
    "matbench_expt_is_metal": [985, 984, 984, 984, 984],
    "matbench_glass": [1136, 1136, 1136, 1136, 1136],
    "matbench_jdft2d": [128, 127, 127, 127, 127],
    "matbench_log_gvrh": [2198, 2198, 2197, 2197, 2197],
    "matbench_log_kvrh": [2198, 2198, 2197, 2197, 2197],
    "matbench_mp_e_form": [26551, 26551, 26550, 26550, 26550],
    "matbench_mp_gap": [21223, 21223, 21223, 21222, 21222],
    "matbench_mp_is_metal": [21223, 21223, 21223, 21222, 21222],
    "matbench_perovskites": [3786, 3786, 3786, 3785, 3785],
    "matbench_phonons": [253, 253, 253, 253, 253],
    "matbench_steels": [63, 63, 62, 62, 62],
}


@pytest.fixture(scope="module")
def matbench_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("matbench")
    meta = build_matbench(MB_DIR, out)
    return out, meta


@pytest.fixture()
def hf_cache(tmp_path):
    return str(tmp_path / "hf_cache")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSMAT_DATA_DIR", str(tmp_path))
    assert paths.data_dir() == tmp_path
    monkeypatch.setenv("CROSSMAT_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="CROSSMAT_DATA_DIR"):
        paths.data_dir()


@needs_data
def test_matbench_all_tasks_official_folds(matbench_folder, hf_cache):
    out, meta = matbench_folder
    assert sorted(meta["tasks"]) == sorted(TASKS) and len(TASKS) == 13
    assert meta["rejected_rows"] == 0
    for task in TASKS:
        info = task_info(task)
        source = pd.read_csv(MB_DIR / f"{task}.csv.gz")
        tests = [pd.read_parquet(out / task / f"test_fold{k}.parquet") for k in range(5)]
        trains = [pd.read_parquet(out / task / f"train_fold{k}.parquet") for k in range(5)]
        assert [len(t) for t in tests] == OFFICIAL_TEST_FOLD_SIZES[task], task
        assert sum(len(t) for t in tests) == info["n"] == len(source)
        ids = [set(t["id"]) for t in tests]
        assert len(set().union(*ids)) == info["n"], f"{task}: test folds overlap"
        for k in range(5):
            assert set(trains[k]["id"]).isdisjoint(ids[k])
            assert len(trains[k]) + len(tests[k]) == info["n"]
        # ids, targets and folds preserved exactly, in official order
        merged = pd.concat(tests).set_index("id").loc[source["id"]]
        np.testing.assert_array_equal(merged["test_fold"].to_numpy(), source["test_fold"].to_numpy())
        np.testing.assert_array_equal(merged["target"].to_numpy(), source[info["target"]].to_numpy())
        assert (merged["formula"].to_numpy() == source["formula"].to_numpy()).all()
        # the MatBench splitting protocol (used for the official json download) reproduces the folds
        np.testing.assert_array_equal(official_folds(source[info["target"]].to_numpy(), info["task_type"]),
                                      source["test_fold"].to_numpy())  # fmt: skip
    card = (out / "README.md").read_text()
    assert card.count("config_name:") == 13 and "train_fold4" in card and "Dunn" in card
    ds = load_dataset(str(out), "matbench_expt_gap", split="train_fold0", cache_dir=hf_cache)
    assert ds.num_rows == 4604 - 921 and ds.column_names == ["id", "formula", "target", "test_fold"]
    ds = load_dataset(str(out), "matbench_glass", split="test_fold3", cache_dir=hf_cache)
    assert ds.features["target"].dtype == "int64" and set(ds["target"]) == {0, 1}
    assert split_names()[:2] == ["train_fold0", "test_fold0"]


def _official_json(task: str, dest: Path) -> None:
    """Write <task>.json.gz in the official MatBench format (pandas split orient) from the shared csv."""
    info = task_info(task)
    frame = pd.read_csv(MB_DIR / f"{task}.csv.gz")
    payload = {"index": frame["id"].tolist(), "columns": ["composition", info["target"]],
               "data": [[f, float(t)] for f, t in zip(frame["formula"], frame[info["target"]], strict=True)]}  # fmt: skip
    with gzip.open(dest / f"{task}.json.gz", "wt") as f:
        json.dump(payload, f)


@needs_data
def test_matbench_download_from_local_http_server(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    _official_json("matbench_steels", served)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CROSSMAT_CACHE_DIR", str(tmp_path / "cache"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        got = load_task_frame("matbench_steels", url)
        ref = load_task_frame("matbench_steels", MB_DIR)
        pd.testing.assert_frame_equal(got, ref)
        assert (tmp_path / "cache" / "matbench_v0.1" / "matbench_steels.json.gz").is_file()
        with pytest.raises(DownloadError, match="offline"):
            load_task_frame("matbench_expt_gap", url)  # 404 on the mirror
    finally:
        server.shutdown()
    with pytest.raises(DownloadError, match="cannot download"):
        load_task_frame("matbench_glass", f"http://127.0.0.1:{_free_port()}", timeout=5)


@needs_data
def test_official_json_structure_rows_give_reduced_formula():
    from pymatgen.core import Structure

    from crossmat.dataset_builders.matbench import _formula_from_obj

    cif = pd.read_csv(DATA / "perov_5" / "val.csv.gz", nrows=2)["cif"]
    for text in cif:
        s = Structure.from_str(text, fmt="cif")
        assert _formula_from_obj(s.as_dict()) == s.composition.reduced_formula
    assert _formula_from_obj({"@module": "pymatgen.core.composition", "Fe": 4.0, "O": 6.0}) == "Fe2O3"


def test_matbench_bad_input(tmp_path):
    folder = tmp_path / "mb"
    folder.mkdir()
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "formula": ["Fe2O3", "Xx2O", "NaCl", "KBr"],
                          "yield strength": [1.0, 2.0, np.nan, "abc"], "test_fold": [0, 1, 2, 3]})  # fmt: skip
    frame.to_csv(folder / "matbench_steels.csv.gz", index=False)
    with pytest.raises(BadInputError, match=r"matbench_steels.csv.gz: row 1 \(id 'b'\): unparseable formula"):
        build_matbench(folder, tmp_path / "out", tasks=["matbench_steels"])
    meta = build_matbench(folder, tmp_path / "out", tasks=["matbench_steels"], on_bad="report")
    assert meta["rejected_rows"] == 3
    report = pd.read_csv(tmp_path / "out" / "rejected_rows.csv")
    assert report["id"].tolist() == ["b", "c", "d"]
    assert "NaN" in report["reason"][1] and "non-numeric" in report["reason"][2]
    assert "3 rows were rejected" in (tmp_path / "out" / "README.md").read_text()
    frame.drop(columns="test_fold").to_csv(folder / "matbench_steels.csv.gz", index=False)
    with pytest.raises(BadInputError, match="missing column"):
        load_task_frame("matbench_steels", folder)


@pytest.mark.usefixtures("data_dir")
def test_matbench_card_size_category_matches_rows(tmp_path):
    """The dataset card's size_categories is computed from the rows built, not a fixed 100K<n<1M."""
    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 132_752, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]
    meta = build_matbench(MB_DIR, tmp_path / "out", tasks=["matbench_steels", "matbench_expt_gap"])
    n = sum(m["n_rows"] for m in meta["tasks"].values())
    assert 1000 < n < 10_000
    header = (tmp_path / "out" / "README.md").read_text().split("---")[1]
    assert "1K<n<10K" in header and "100K<n<1M" not in header


@pytest.mark.usefixtures("data_dir")
def test_llm4mat_sample(tmp_path, hf_cache):
    assert n_tasks() == 65 and len(DATASETS) == 10
    # the parent folder with an official alias works too
    parent = tmp_path / "data"
    parent.mkdir()
    (parent / "materials_project").symlink_to(L4M_DIR, target_is_directory=True)
    out = tmp_path / "mp"
    meta = build_llm4mat(parent, "mp", out)
    assert sorted(meta["tasks"]) == sorted(DATASETS["mp"])
    raw = pd.read_csv(L4M_DIR / "test.csv")
    ds = load_dataset(str(out), "is_stable", split="test", cache_dir=hf_cache)
    assert ds.column_names == ["id", "formula", "target", "cif_structure"]
    assert list(ds["id"]) == raw["material_id"].tolist() and list(ds["target"]) == raw["is_stable"].astype(int).tolist()
    ds = load_dataset(str(out), "band_gap", split="validation", cache_dir=hf_cache)
    np.testing.assert_allclose(ds["target"], pd.read_csv(L4M_DIR / "validation.csv")["band_gap"])
    assert meta["tasks"]["is_gap_direct"]["task_type"] == "classification"


def _snumat_like(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = {"formula": ["GaAs", "Si", "ZnO", "NaCl", "KBr"],
            "Direct_or_indirect": ["Direct", "Indirect", "Null", np.nan, "Direct"],
            "Band_gap_HSE": [1.4, 1.1, np.nan, 8.5, 7.0]}  # fmt: skip
    for split in ("train", "validation", "test"):
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)


def test_llm4mat_official_cleaning_and_bad_input(tmp_path):
    _snumat_like(tmp_path / "snumat")
    meta = build_llm4mat(tmp_path, "snumat", tmp_path / "out", properties=["Direct_or_indirect", "Band_gap_HSE"])
    cls = pd.read_parquet(tmp_path / "out" / "Direct_or_indirect" / "train.parquet")
    assert cls["formula"].tolist() == ["GaAs", "Si", "KBr"] and cls["target"].tolist() == [1, 0, 1]
    assert meta["tasks"]["Direct_or_indirect"]["splits"]["train"]["dropped"] == {
        "null_label": 1, "nan_label": 1, "missing_formula": 0}  # fmt: skip
    reg = pd.read_parquet(tmp_path / "out" / "Band_gap_HSE" / "test.parquet")
    assert len(reg) == 4 and meta["tasks"]["Band_gap_HSE"]["task_type"] == "regression"
    bad = tmp_path / "bad" / "snumat"
    _snumat_like(bad)
    frame = pd.read_csv(bad / "validation.csv")
    frame.loc[3, "formula"] = "Qq2"
    frame.to_csv(bad / "validation.csv", index=False)
    with pytest.raises(BadInputError, match=r"validation.csv: row 3 .*unknown element 'Qq'"):
        build_llm4mat(bad, "snumat", tmp_path / "out2", properties=["Band_gap_HSE"])
    with pytest.raises(BadInputError, match="missing property column"):
        build_llm4mat(bad, "snumat", tmp_path / "out2", properties=["SOC"])
    with pytest.raises(ValueError, match="unknown LLM4Mat-Bench dataset"):
        build_llm4mat(bad, "nope", tmp_path / "out2")


@needs_data
def test_corpus_dedup_and_leakage_guard(tmp_path, hf_cache):
    transport = transport_formulas()
    assert len(transport) == 47737 and {"mp_id", "formula", "S_p"} <= set(transport.columns)
    extra = tmp_path / "extra.csv"
    pd.DataFrame({"formula": ["Fe4O6", "Fe2O3", "(NH4)2SO4", "CuSO4·5H2O"]}).to_csv(extra, index=False)
    out = tmp_path / "corpus"
    meta = build_corpus(["mp_transport", f"file={extra}"], out, exclude=["matbench=matbench_expt_gap@0"],
                        validation_fraction=0.1)  # fmt: skip
    ds = load_dataset(str(out), split="train", cache_dir=hf_cache)
    val = load_dataset(str(out), split="validation", cache_dir=hf_cache)
    formulas = list(ds["formula"]) + list(val["formula"])
    assert len(formulas) == len(set(formulas)) == sum(meta["rows"].values())
    fold0 = load_task_frame("matbench_expt_gap")
    banned = {canonical_formula(f) for f in fold0.loc[fold0["test_fold"] == 0, "formula"]}
    assert banned.isdisjoint(formulas)
    removed = meta["exclusions"][0]["removed_from_corpus"]
    assert removed > 0 and len((out / "excluded_formulas.txt").read_text().split()) == removed
    assert "matbench=matbench_expt_gap@0" in (out / "README.md").read_text()
    row = pd.read_parquet(out / "data" / "train.parquet").set_index("formula")
    fe2o3 = row.loc["Fe2O3"] if "Fe2O3" in row.index else pd.read_parquet(out / "data" / "validation.parquet").set_index("formula").loc["Fe2O3"]  # noqa: E501
    assert fe2o3["n_entries"] >= 2 and f"file={extra}" in fe2o3["source"]
    pd.DataFrame({"formula": ["NaCl", "Zz"]}).to_csv(extra, index=False)
    with pytest.raises(BadInputError, match="row 1"):
        build_corpus([f"file={extra}"], tmp_path / "c2")


def test_cli_help_and_errors(capsys, tmp_path):
    for name in ("matbench", "llm4mat", "corpus", "embeddings", "publish"):
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "--out" in capsys.readouterr().out or name == "publish"
    assert main(["llm4mat", "--source", str(tmp_path), "--dataset", "mp", "--out", str(tmp_path / "o")]) == 2
    assert "no train.csv" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "crossmat.dataset_builders", "--help"], capture_output=True, text=True,
                          cwd=REPO, check=False)  # fmt: skip
    assert proc.returncode == 0 and "embeddings" in proc.stdout


@needs_data
def test_cli_matbench_subset(tmp_path, hf_cache):
    out = tmp_path / "mb"
    assert main(["matbench", "--source", str(MB_DIR), "--out", str(out), "--tasks", "matbench_steels"]) == 0
    assert load_dataset(str(out), "matbench_steels", split="test_fold2", cache_dir=hf_cache).num_rows == 62


def test_publish_offline_and_not_a_dataset(tmp_path):
    with pytest.raises(PublishError, match="not a built dataset folder"):
        publish_folder(tmp_path, "someone/x")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: x.parquet\n---\n")
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}", HF_TOKEN="hf_dummy")
    env.pop("HF_HUB_OFFLINE", None)
    code = (f"from dataset_builders.cli import main; raise SystemExit(main(['publish', '--folder', {str(folder)!r}, "
            "'--repo-id', 'someone/x']))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 2 and "could not publish" in proc.stderr and "offline" in proc.stderr
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 2 and "HF_HUB_OFFLINE" in proc.stderr
    shutil.rmtree(folder)


def test_one_cache_variable_and_the_old_name_warns(tmp_path, monkeypatch):
    from crossmat.dataset_builders import paths

    monkeypatch.delenv("CROSSMAT_CACHE_DIR", raising=False)
    monkeypatch.setenv("CROSSMAT_CACHE", str(tmp_path / "old"))
    with pytest.warns(DeprecationWarning, match="CROSSMAT_CACHE_DIR"):
        assert paths.cache_dir() == tmp_path / "old"
    monkeypatch.setenv("CROSSMAT_CACHE_DIR", str(tmp_path / "new"))
    assert paths.cache_dir() == tmp_path / "new" and (tmp_path / "new").is_dir()
    monkeypatch.setenv("CROSSMAT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("CROSSMAT_TENSORNET", raising=False)
    assert paths.tensornet_dir() == tmp_path / "models" / "matgl" / paths.DEFAULT_MATGL_MODEL
