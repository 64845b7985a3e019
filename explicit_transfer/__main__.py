"""Command line: ``python -m crossmat.explicit_transfer {generate,train-cif-lm,convert-crystallm,train-predictor,predict}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from crossmat.dataset_builders.cli_flags import FlagParser


def _read_table(path: str, text_column: str | None = None) -> pd.DataFrame:
    """A table through the one reader (``dataset_builders.tables``); ``text_column`` (formulas, CIFs) is kept as
    written: ``NA``/empty cells stay text and a NUL byte stays in the cell, so the formula grammar refuses them
    with a reason. An unreadable file or a bad row exits with the file, line, row and reason."""
    from crossmat.dataset_builders.tables import TableError, read_table

    try:
        return read_table(path, text_columns=[text_column] if text_column else ()).frame
    except TableError as err:
        sys.exit(f"error: {err}")


def _column(df: pd.DataFrame, name: str, path: str, formulas: bool = False) -> list:
    """The cells of column ``name``; a missing one exits naming the near miss, or (``formulas``) the column that
    holds formulas."""
    from crossmat.dataset_builders.tables import missing_column_hint

    if name not in df.columns:
        hint = missing_column_hint(name, list(df.columns), name if formulas else None, df)
        sys.exit(f"error: column {name!r} not in {path}{hint} (columns: {list(df.columns)})")
    return df[name].tolist()


def _parse_cifs(cifs: list, what: str) -> tuple[list, list[dict]]:
    from pymatgen.core import Structure

    ok, rejected = [], []
    for i, c in enumerate(cifs):
        try:
            ok.append((i, Structure.from_str(str(c), fmt="cif")))
        except Exception as err:  # noqa: BLE001 - reported, not dropped silently
            rejected.append({"row": i, "reason": f"{what}: CIF does not parse: {type(err).__name__}: {str(err)[:100]}"})
    return ok, rejected


def _structure_files(paths: list[str], cif_column: str, what: str) -> list[tuple[str, object]]:
    """``(id, Structure)`` from tables with a CIF column (id ``file:row``), ``.cif`` files (id: the file name) and
    folders of ``.cif`` files. A CIF that does not parse is reported on stderr with its file (and row) and the
    reason, and skipped; a path that does not exist, or a folder without ``.cif`` files, is an error."""
    out = []
    for path in paths:
        p = Path(path)
        files = sorted(p.glob("*.cif")) if p.is_dir() else [p] if p.suffix.lower() == ".cif" else None
        if files is None:  # a table
            ok, rejected = _parse_cifs(_column(_read_table(path, cif_column), cif_column, path), f"{what} file {path}")
            for r in rejected:
                print(f"warning: {what} row {r['row']} skipped: {r['reason']}", file=sys.stderr)
            out += [(f"{p.name}:{i}", s) for i, s in ok]
            continue
        if not files or not all(f.is_file() for f in files):
            sys.exit(f"error: {what} path {path}: no such .cif file" if not p.is_dir() else
                     f"error: {what} folder {path} holds no .cif file")
        for f in files:
            ok, rejected = _parse_cifs([f.read_text(errors="replace")], f"{what} file {f}")
            for r in rejected:
                print(f"warning: {what} file {f} skipped: {r['reason']}", file=sys.stderr)
            out += [(f.name, s) for _, s in ok]
    return out


MAX_Z = 94  # CHGNet and M3GNet/TensorNet embed elements H..Pu


def _unsupported_species(structure) -> str:
    """Why a structure cannot go through the universal potentials (unknown/dummy species, Z > 94), or ""."""
    from pymatgen.core import Element

    for sp in structure.composition.elements:
        el = getattr(sp, "element", sp)
        if not isinstance(el, Element):
            return f"unknown element / dummy species {str(sp)!r} in the structure"
        if el.Z > MAX_Z:
            return f"element {el.symbol} (Z={el.Z}) is not supported by the universal potentials (Z <= {MAX_Z})"
    return ""


def _check_generate_output(output: str, given: str | None) -> None:
    """Exit before any work when ``--output`` is not a JSON-lines name, is the input file, or is an existing file that
    holds no generate records (generate appends to its output to resume: it would write into that file)."""
    from .pipeline import read_jsonl

    out = Path(output)
    if not out.name.endswith(".jsonl"):
        sys.exit(f"error: --output {output}: generate writes JSON lines (one record per formula, with its candidate "
                 f"CIFs), so give a .jsonl name, e.g. {out.name.split('.')[0] or 'candidates'}.jsonl; `generate "
                 "predict --generated <it>` then predicts from the top candidates into a CSV")
    if given and out.exists() and out.resolve() == Path(given).resolve():
        sys.exit(f"error: --output {output} is the --input file; give another name (generate appends to its output)")
    if out.is_file() and out.stat().st_size:
        bad: list[tuple[int, str]] = []
        if not read_jsonl(out, bad) and bad:
            sys.exit(f"error: --output {output} exists and holds no generate records ({bad[0][1]}); "
                     "generate appends to its output to resume, so give a new name or remove that file")


def cmd_generate(a: argparse.Namespace) -> None:
    from .pipeline import generate_to_jsonl

    _check_generate_output(a.output, a.input)
    if a.input:
        df = _read_table(a.input, a.formula_column)
        formulas = _column(df, a.formula_column, a.input, formulas=True)
        if a.id_column:  # named: it must be there
            ids = _column(df, a.id_column, a.input)
        else:
            ids = df["id"].tolist() if "id" in df.columns else None
    else:
        formulas, ids = a.formulas, None
    if not formulas:
        sys.exit("error: give formulas or --input")
    known = _structure_files(a.known, a.cif_column, "known") if a.known else None
    if a.generator == "prototype":
        from .prototypes import PrototypeGenerator

        templates = _structure_files(a.templates or [], a.cif_column, "template")
        gen = PrototypeGenerator(templates=templates, use_aflow=not a.no_aflow)
    else:
        from .cif_lm import CIFLanguageModelGenerator

        if not a.model:
            sys.exit("error: --generator cif-lm needs --model <folder with a CIF LM>")
        gen = CIFLanguageModelGenerator.from_pretrained(a.model, n_samples=a.samples, z_values=a.z,
                                                        temperature=a.temperature, top_k=a.top_k,
                                                        constrained=not a.unconstrained, space_group=a.space_group,
                                                        batch_formulas=a.batch_formulas)
        import torch

        if torch.cuda.is_available():
            gen.model.to("cuda")
    rank, potential = a.rank, a.potential
    if rank in ("none", "similarity"):
        rank = None
    elif rank in ("chgnet", "matgl-tensornet"):
        rank, potential = "energy", rank
    if rank in ("learned", "learned+energy"):
        if not a.ranker:
            sys.exit(f"error: --rank {rank} needs --ranker <folder with a trained site ranker>")
        from .site_ranker import SiteRanker

        try:
            ranker = SiteRanker.from_pretrained(a.ranker)
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f"error: {err}")
    else:
        ranker = None
    output, shard = a.output, None
    # under `accelerate launch -m explicit_transfer generate ...` each process takes every P-th row; a
    # broken distributed setup raises here instead of silently running the whole input in one process
    try:
        from accelerate import PartialState
    except ImportError:  # accelerate comes with the [train] extra; without it there is one process
        PartialState = None

    state = PartialState() if PartialState is not None else None
    if state is not None and state.num_processes > 1:
        shard = (state.process_index, state.num_processes)
        output = f"{a.output}.part{state.process_index}-of-{state.num_processes}"
    stats = generate_to_jsonl(gen, formulas, output, n_candidates=a.n, rank=rank, relax_steps=a.relax_steps, ids=ids,
                              potential=potential, ranker=ranker, distinct=a.distinct, known=known, shard=shard,
                              site_order=a.site_order)
    print(json.dumps(stats))


def train_cif_lm_command(a: argparse.Namespace) -> list[str]:
    """The ``crossmat train --config cif_lm ...`` arguments that ``train-cif-lm`` runs: one CIF-LM trainer, the
    ``cif_lm`` stage (training/cif_lm_stage.py), with these options as recipe overrides."""
    inputs = [str(Path(p).resolve()) for p in a.input]
    for path in inputs:
        if not Path(path).is_file():
            sys.exit(f"error: input file {path} not found")
    overrides = [f"data.train={json.dumps(inputs)}", f"data.cif_column={json.dumps(a.cif_column)}",
                 f"train.epochs={a.epochs}", f"train.max_steps={a.max_steps if a.max_steps > 0 else 'null'}",
                 f"train.batch_size={a.batch_size}", f"train.learning_rate={a.lr}",
                 *(f"model.config.{k}={getattr(a, k)}" for k in ("n_embd", "n_layer", "n_head", "n_positions"))]
    return ["--config", "cif_lm", "--output-dir", a.output_dir, *(["--resume"] if a.resume else []), *overrides, *a.set]


def cmd_train_cif_lm(a: argparse.Namespace) -> None:
    import shlex
    import subprocess

    argv = train_cif_lm_command(a)
    print("train-cif-lm runs: crossmat train " + " ".join(shlex.quote(x) for x in argv), file=sys.stderr, flush=True)
    # a child process: explicit_transfer does not import training (same layer, docs/architecture.md)
    sys.exit(subprocess.call([sys.executable, "-m", "crossmat.cli", "train", *argv]))


def cmd_convert(a: argparse.Namespace) -> None:
    from .convert_crystallm import convert_crystallm_checkpoint

    try:
        model, tok = convert_crystallm_checkpoint(a.checkpoint, a.output_dir, vocab=a.vocab, trust_pickle=a.trust_pickle)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"convert-crystallm: error: {err}") from None
    print(f"saved GPT2LMHeadModel ({model.num_parameters()} parameters, vocab {len(tok)}) to {a.output_dir}")


def cmd_train_predictor(a: argparse.Namespace) -> None:
    from .potentials import crystal_features
    from .predictor import train_structure_predictor

    df = _read_table(a.input, a.cif_column)
    ok, rejected = _parse_cifs(_column(df, a.cif_column, a.input), a.input)
    y = pd.to_numeric(df[a.target], errors="coerce").to_numpy() if a.target in df.columns else None
    if y is None:
        sys.exit(f"error: target column {a.target!r} not in {a.input}")
    unsupported = {i: _unsupported_species(s) for i, s in ok}
    rejected += [{"row": i, "reason": why} for i, why in unsupported.items() if why]
    ok = [(i, s) for i, s in ok if not unsupported[i]]
    keep = [(i, s) for i, s in ok if np.isfinite(y[i])]
    rejected += [{"row": i, "reason": f"target {a.target} is missing/not a number"} for i, _ in ok if not np.isfinite(y[i])]
    feats = crystal_features([s for _, s in keep], a.encoder)
    train_structure_predictor(feats, y[[i for i, _ in keep]], a.output_dir, encoder=a.encoder, target_name=a.target,
                              target_unit=a.unit, epochs=a.epochs)
    if rejected:
        pd.DataFrame(rejected).to_csv(Path(a.output_dir, "rejected_rows.csv"), index=False)
    print(json.dumps({"trained_on": len(keep), "rejected": len(rejected), "output": a.output_dir}))


def cmd_predict(a: argparse.Namespace) -> None:
    from transformers import AutoModel

    from . import register
    from .pipeline import read_jsonl

    register()
    if not Path(a.generated).is_file():
        sys.exit(f"error: --generated file {a.generated} not found (write it with `generate`)")
    bad_lines: list[tuple[int, str]] = []
    recs = read_jsonl(a.generated, bad_lines)
    for _, reason in bad_lines:
        print(f"warning: {a.generated}: {reason}; skipped", file=sys.stderr)
    if not recs:
        sys.exit(f"error: {a.generated} holds no generate records")
    model = AutoModel.from_pretrained(a.model, use_safetensors=True)
    rows, structs = [], []
    failures = [r.get("failure") for r in recs]
    for k, r in enumerate(recs):
        if r.get("candidates"):
            parsed, rejected = _parse_cifs([r["candidates"][0].get("cif")], f"row {r['row']}")
            if rejected:
                failures[k] = rejected[0]["reason"]
                continue
            reason = _unsupported_species(parsed[0][1])
            if reason:
                failures[k] = reason
                continue
            rows.append(r)
            structs.append(parsed[0][1])
    preds = model.predict_structures(structs)[:, 0] if structs else np.zeros(0)
    out = pd.DataFrame({"row": [r["row"] for r in recs], "formula": [r.get("formula") for r in recs]})
    pm = {r["row"]: float(p) for r, p in zip(rows, preds, strict=True)}
    out["prediction"] = out["row"].map(pm)
    out["failure"] = failures
    out.to_csv(a.output, index=False)
    print(json.dumps({"predicted": len(pm), "failed": int(out.prediction.isna().sum()), "corrupt_lines": len(bad_lines),
                      "output": a.output}))


# folder outputs were once --output (a file flag); still accepted, hidden, with a notice on stderr
_FOLDER_OUTPUT = {"--output": "--output-dir"}


def main(argv: list[str] | None = None) -> None:
    ap = FlagParser(prog="python -m crossmat.explicit_transfer", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="formulas -> ranked candidate structures (JSON lines, resumable)")
    g.add_argument("formulas", nargs="*")
    g.add_argument("--input", help="CSV/parquet with a formula column")
    g.add_argument("--formula-column", default="formula")
    g.add_argument("--id-column", default=None, help="row id column of --input (default: 'id' when there is one)")
    g.add_argument("--generator", choices=["prototype", "cif-lm"], default="prototype")
    g.add_argument("--templates", nargs="*",
                   help="structures to add to the template library: tables with a CIF column (--cif-column), "
                        ".cif files or folders of them")
    g.add_argument("--cif-column", default="cif")
    g.add_argument("--no-aflow", action="store_true", help="do not use pymatgen's AFLOW prototypes")
    g.add_argument("--model", help="CIF LM folder (for --generator cif-lm)")
    g.add_argument("--samples", type=int, default=20, help="CIF LM draws per formula")
    g.add_argument("--z", type=int, nargs="+", default=[1, 2, 4], help="formula units per cell to prompt with")
    g.add_argument("--batch-formulas", type=int, default=16,
                   help="cif-lm: formulas (of equal prompt length) sampled in one generate call (1: one call each)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=10)
    g.add_argument("--unconstrained", action="store_true",
                   help="cif-lm: plain sampling (default: composition-constrained decoding, every sample holds the "
                        "prompt's species in the prompt's counts)")
    g.add_argument("--space-group", choices=["p1", "free", "auto"], default="p1",
                   help="cif-lm constrained decoding: force P1 (exact composition), let the model write the space "
                        "group and Wyckoff multiplicities (free), or P1 when it fits the context (auto)")
    g.add_argument("-n", type=int, default=5, help="candidates kept per formula")
    g.add_argument("--rank", choices=["none", "similarity", "energy", "chgnet", "matgl-tensornet", "learned",
                                      "learned+energy"], default="none",
                   help="order of the kept candidates: the generator's own (none/similarity), potential energy "
                        "(energy = --potential; chgnet / matgl-tensornet name it), a learned site ranker (learned, "
                        "needs --ranker) or both (learned+energy)")
    g.add_argument("--potential", choices=["chgnet", "matgl-tensornet"], default="chgnet",
                   help="potential for --rank energy / learned+energy")
    g.add_argument("--ranker", help="site ranker folder (config.json + model.safetensors) for --rank learned")
    g.add_argument("--relax-steps", type=int, default=0, help="bounded relaxation steps before ranking (0: none)")
    g.add_argument("--distinct", action="store_true",
                   help="after ranking, put one candidate per distinct structure first (StructureMatcher, the CSP "
                        "match settings); repeats follow, flagged metadata.duplicate_of")
    g.add_argument("--known", nargs="+", metavar="PATH",
                   help="structures you already have (tables with a CIF column, .cif files or folders of them): "
                        "candidates that reproduce one of their composition (StructureMatcher, the CSP settings) go "
                        "after the others, flagged metadata.known_as (applied before --distinct)")
    g.add_argument("--site-order", choices=["composition", "written"], default="composition",
                   help="written: for a formula written A B X3 (the perovskite convention, A-site cation first: "
                        "SrTiO3), candidates with that cation on the A site go first, the others after, flagged "
                        "metadata.written_order=false (after --known, before --distinct); composition: the written "
                        "order is ignored")
    g.add_argument("--output", required=True, help="JSON-lines output (resumes if it exists)")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train-cif-lm", help="train a GPT-2 CIF language model on CIF tables (runs `crossmat train "
                       "--config cif_lm` with these options)", deprecated=_FOLDER_OUTPUT)
    t.add_argument("--input", nargs="+", required=True, help="CSV/parquet file(s) with a CIF column (data.train)")
    t.add_argument("--cif-column", default="cif")
    t.add_argument("--output-dir", required=True, help="output folder for the model and tokenizer")
    t.add_argument("--epochs", type=int, default=3, help="train.epochs (with --max-steps unset)")
    t.add_argument("--max-steps", type=int, default=-1, help="train.max_steps (-1: from --epochs)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3, help="train.learning_rate")
    t.add_argument("--n-embd", type=int, default=128)
    t.add_argument("--n-layer", type=int, default=4)
    t.add_argument("--n-head", type=int, default=4)
    t.add_argument("--n-positions", type=int, default=512)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other cif_lm recipe override, e.g. --set data.cif_forms=[symmetrized] (repeatable)")
    t.set_defaults(func=cmd_train_cif_lm)

    c = sub.add_parser("convert-crystallm", help="CrystaLLM ckpt.pt -> transformers GPT-2 + CIF tokenizer",
                       deprecated=_FOLDER_OUTPUT)
    c.add_argument("checkpoint")
    c.add_argument("--vocab", help="tokens.json or tokens.txt (token order); CrystaLLM's meta.pkl only with --trust-pickle")
    c.add_argument("--output-dir", required=True, help="folder for the converted model and tokenizer")
    c.add_argument("--trust-pickle", action="store_true",
                   help="trusted files only: allow non-tensor pickles in the checkpoint and a meta.pkl vocabulary")
    c.set_defaults(func=cmd_convert)

    p = sub.add_parser("train-predictor", help="MLP head on frozen structure-encoder features of real structures",
                       deprecated=_FOLDER_OUTPUT)
    p.add_argument("--input", required=True, help="CSV/parquet with CIFs and a target column")
    p.add_argument("--cif-column", default="cif")
    p.add_argument("--target", required=True, help="target column")
    p.add_argument("--unit", default="")
    p.add_argument("--encoder", choices=["chgnet", "matgl-tensornet"], default="chgnet")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--output-dir", required=True, help="folder for the predictor")
    p.set_defaults(func=cmd_train_predictor)

    q = sub.add_parser("predict", help="exKT: predict a property from the top candidate of a generate job")
    q.add_argument("--model", required=True)
    q.add_argument("--generated", required=True, help="JSON lines written by `generate`")
    q.add_argument("--output", required=True, help="CSV with row, formula, prediction, failure")
    q.set_defaults(func=cmd_predict)

    a = ap.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
