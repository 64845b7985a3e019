"""Command line for the dataset builders: one sub-command per builder."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from crossmat._extras import needs_extra

from .cli_flags import FlagParser
from .common import ON_BAD, BadInputError, describe_write_error
from .download import DownloadError
from .publish import PublishError

__all__ = ["main", "build_parser"]

_ON_BAD_HELP = (
    "what to do with bad rows (unparseable formula, broken CIF, NaN/non-numeric target): 'error' stops with "
    "file, row and reason (default); 'report' leaves them out and writes rejected_rows*.csv next to the output"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m crossmat.dataset_builders`` argument parser."""
    parser = FlagParser(prog="python -m crossmat.dataset_builders", description=__doc__,
                        deprecated={"--out": "--output-dir"})
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("matbench", help="MatBench v0.1, 13 tasks x official 5 folds")
    p.add_argument("--source", default=None,
                   help="folder with <task>.csv.gz or official <task>.json.gz files, 'official' (download the URLs "
                        "in matminer's metadata) or a mirror base URL; default $CROSSMAT_DATA_DIR/matbench_v0.1")
    p.add_argument("--output-dir", required=True, help="output dataset folder")
    p.add_argument("--tasks", nargs="*", default=None, help="subset of tasks (default: all 13)")
    p.add_argument("--timeout", type=float, default=60.0, help="download timeout in seconds")
    p.add_argument("--on-bad", choices=ON_BAD, default="error", help=_ON_BAD_HELP)

    p = sub.add_parser("llm4mat", help="LLM4Mat-Bench dataset (official CSVs), one config per property")
    p.add_argument("--source", required=True, help="the dataset folder (train/validation/test.csv) or its parent")
    p.add_argument("--dataset", required=True, help="mp, jarvis_dft, gnome, hmof, cantor_hea, jarvis_qe_tb, oqmd, "
                                                    "qmof, snumat, omdb (official aliases accepted)")
    p.add_argument("--output-dir", required=True, help="output dataset folder")
    p.add_argument("--properties", nargs="*", default=None, help="subset of property tasks (default: all)")
    p.add_argument("--drop-cif", action="store_true", help="do not keep the cif_structure column")
    p.add_argument("--on-bad", choices=ON_BAD, default="error", help=_ON_BAD_HELP)

    p = sub.add_parser("corpus", help="deduplicated formula corpus for MLM pretraining, with a leakage guard")
    p.add_argument("--source", action="append", required=True,
                   help="mp_transport | matbench | matbench=<task> | llm4mat=<folder> | file=<csv/parquet> (repeat)")
    p.add_argument("--exclude", action="append", default=[],
                   help="leakage guard: matbench=<task>[@fold] | llm4mat=<folder>[@split] | file=<path> (repeat)")
    p.add_argument("--output-dir", required=True, help="output dataset folder")
    p.add_argument("--validation-fraction", type=float, default=0.0, help="hold out this fraction as 'validation'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-bad", choices=ON_BAD, default="error", help=_ON_BAD_HELP)

    p = sub.add_parser("embeddings", help="precomputed structure embeddings (CHGNet / matgl TensorNet / pymatgen descriptors)")
    p.add_argument("--source", required=True, help="perov_5 | mp_structures | aflow_prototypes | <csv/parquet with a cif column>")
    p.add_argument("--encoder", default="chgnet", choices=["chgnet", "matgl-tensornet", "descriptors"])
    p.add_argument("--matgl-model", default=None,
                   help="matgl model folder or registry name (default: $CROSSMAT_MODELS_DIR/matgl/"
                        "TensorNet-MatPES-PBE-v2025.1-PES, else that registry name)")
    p.add_argument("--output-dir", required=True, help="output dataset folder (rerun the same command to resume)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--shard-size", type=int, default=1000, help="rows per parquet shard (the unit of resumption)")
    p.add_argument("--limit", type=int, default=None, help="only the first N structures")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads per process (default: torch's choice; cores/processes under accelerate); "
                        "1 is fastest when the CPU is shared")
    p.add_argument("--on-bad", choices=ON_BAD, default="error", help=_ON_BAD_HELP)

    p = sub.add_parser("alignment", help="imKT alignment set: one structure embedding per formula, leakage guard")
    p.add_argument("--embeddings", action="append", required=True,
                   help="an embeddings output folder (repeat to combine, e.g. mp_structures and perov_5)")
    p.add_argument("--encoder", action="append", required=True, choices=["chgnet", "matgl-tensornet", "descriptors"],
                   help="encoder config to use (repeat to concatenate, in order)")
    p.add_argument("--polymorphs", default="lowest_energy", choices=["lowest_energy", "mean"],
                   help="one target per formula: the lowest-energy structure (first encoder's energy) or the mean")
    p.add_argument("--exclude", action="append", default=[],
                   help="leakage guard: matbench=<task>[@fold] | llm4mat=<folder>[@split] | file=<path> (repeat)")
    p.add_argument("--max-formulas", type=int, default=None, help="seeded nested subset (scaling curves)")
    p.add_argument("--max-targets", type=int, default=None,
                   help="keep every formula, but the embedding of a seeded nested subset only (alignment-set scaling "
                        "curve at a fixed MLM corpus; train with data.missing_embeddings=mlm_only)")
    p.add_argument("--teacher", default="embedding", choices=["embedding", "energy"],
                   help="target: the encoder's embedding, or its predicted energy per atom and that energy relative to "
                        "fitted elemental references (a formation-energy proxy; lowest-energy polymorph)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", required=True, help="output dataset folder")

    p = sub.add_parser("publish", help="upload a built dataset folder to the Hugging Face Hub")
    p.add_argument("--folder", required=True)
    p.add_argument("--repo-id", required=True, help="e.g. your-name/matbench-v0.1-compositions")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="HF token (default: the logged-in one / HF_TOKEN)")
    return parser  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run one builder; returns the exit status (2 with a one-line message on bad input / offline)."""
    args = build_parser().parse_args(argv)
    try:
        with needs_extra("train", f"crossmat build {args.command}"):
            if args.command == "matbench":
                from .matbench import build_matbench

                result = build_matbench(args.source, args.output_dir, args.tasks, on_bad=args.on_bad, timeout=args.timeout)
                result = {k: v for k, v in result.items() if k != "tasks"} | {"tasks": len(result["tasks"])}
            elif args.command == "llm4mat":
                from .llm4mat import build_llm4mat

                result = build_llm4mat(args.source, args.dataset, args.output_dir, args.properties, args.on_bad, not args.drop_cif)
                result = {k: v for k, v in result.items() if k != "tasks"} | {"tasks": list(result["tasks"])}
            elif args.command == "corpus":
                from .corpus import build_corpus

                result = build_corpus(args.source, args.output_dir, args.exclude, args.validation_fraction, args.seed, args.on_bad)
            elif args.command == "embeddings":
                from .embeddings import build_embeddings

                result = build_embeddings(args.source, args.encoder, args.output_dir, args.batch_size, args.shard_size,
                                          args.limit, args.on_bad, args.matgl_model, num_threads=args.num_threads)  # fmt: skip
            elif args.command == "alignment":
                from .alignment import build_alignment_set

                result = build_alignment_set(args.embeddings, args.encoder, args.output_dir, args.polymorphs, args.exclude,
                                             args.max_formulas, args.seed, args.max_targets, args.teacher)  # fmt: skip
            else:
                from .publish import publish_folder

                result = {"commit": publish_folder(args.folder, args.repo_id, args.token, args.private)}
    except (BadInputError, DownloadError, PublishError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # full / read-only disk while writing the output
        msg = describe_write_error(exc, getattr(args, "output_dir", None) or "the output folder")
        if msg is None:
            raise
        print(f"error: {msg}. Files already written under {getattr(args, 'output_dir', '')} are kept; free space (or fix "
              "the folder) and rerun the same command (embeddings resume from their finished shards)", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=1, default=str))
    return 0
