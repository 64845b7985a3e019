"""``crossmat``: one command for every CrossMat capability. Each subcommand forwards its arguments to the
module that implements it (``train.py``, ``evaluate.py``, ``crossmat-predict``, ``python -m
crossmat.interpretability``, ``python -m crossmat.dataset_builders``, ``python -m crossmat.explicit_transfer``, ``app.py``), so the
options are the same whichever way it is started."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from crossmat._extras import MissingExtraError


@dataclass(frozen=True)
class Command:
    """One ``crossmat`` subcommand: what it does, where it forwards, and runnable examples."""

    summary: str
    target: str  # "module:function" called with the argument list
    examples: tuple[str, ...]
    prefix: tuple[str, ...] = ()  # inserted before the user's arguments (a subcommand of the target CLI)
    passthrough: tuple[str, ...] = field(default=())  # first arguments forwarded without the prefix

    def forward(self, argv: Sequence[str]) -> list[str]:
        args = list(argv)
        if args and args[0] in self.passthrough:
            return args
        return [*self.prefix, *args]


# The examples run in the test suite (tests/test_crossmat_cli.py) in a folder holding train.csv, val.csv,
# test.csv (columns id, formula, band_gap) and candidates.csv (column formula), in this order.
COMMANDS: dict[str, Command] = {
    "train": Command(
        "train a model from a YAML recipe (MLM, imKT, fine-tune, LoRA); no --config = the quickstart",
        "crossmat.training.cli:main",
        ("crossmat train --config default --output-dir outputs/my_gap data.train=train.csv "
         "data.validation=val.csv data.test=test.csv data.target_column=band_gap card.property_unit=eV",),
    ),
    "evaluate": Command(
        "CrossMat and the baselines on the same split, one table: your own files, MatBench or LLM4Mat-Bench",
        "crossmat.evaluation.cli:main",
        ("crossmat evaluate --train train.csv --validation val.csv --test test.csv --target band_gap "
         "--output-dir runs/my_gap",),
    ),
    "predict": Command(
        "predict a property for every formula of a CSV/Parquet file (streams; bad rows reported)",
        "crossmat.inference.predict:main",
        ("crossmat predict --model outputs/my_gap --input candidates.csv --output predictions.csv",
         "crossmat predict --model outputs/my_gap --formula LiCoO2 --formula Fe2O3"),
    ),
    "explain": Command(
        "element attributions and interactions for formulas (captum + shapiq); 'explain aggregate' for a dataset",
        "crossmat.interpretability.cli:main",
        ("crossmat explain --model outputs/my_gap --formula LiCoO2 --output-dir explanations",),
        prefix=("explain",), passthrough=("aggregate",),
    ),
    "build": Command(
        "build datasets: MatBench, LLM4Mat-Bench, pretraining corpora, structure embeddings; publish to the Hub",
        "crossmat.dataset_builders.cli:main",
        ("crossmat build matbench --tasks matbench_steels --output-dir data/matbench_steels",),
    ),
    "generate": Command(
        "exKT: candidate crystal structures for formulas (prototypes or a CIF language model), optional ranking; "
        "'generate train-predictor|predict|train-cif-lm|convert-crystallm' for the rest of exKT",
        "crossmat.explicit_transfer.__main__:main",
        ("crossmat generate LiCoO2 NaCl --output candidates.jsonl",),
        prefix=("generate",), passthrough=("train-cif-lm", "convert-crystallm", "train-predictor", "predict"),
    ),
    "app": Command(
        "local web app (Gradio) for a property model; needs the [app] extra",
        "crossmat.inference.app:main",
        ("crossmat app --model outputs/my_gap --port 7860",),
    ),
}

ENVIRONMENT = """environment variables (docs/environment.md):
  CROSSMAT_DATA_DIR    benchmark data root (default ../shared/data next to the checkout)
  CROSSMAT_CACHE_DIR   feature / embedding cache (default ~/.cache/crossmat)
  CROSSMAT_MODELS_DIR  local model weights (matgl TensorNet) for structure embeddings
  HF_HUB_OFFLINE=1     never contact the Hugging Face Hub"""


def build_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<9} {cmd.summary}" for name, cmd in COMMANDS.items()]
    examples = [f"  {ex}" for cmd in COMMANDS.values() for ex in cmd.examples[:1]]
    p = argparse.ArgumentParser(
        prog="crossmat",
        description="CrossMat: composition-based materials property prediction with cross-modal knowledge transfer.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nexamples:\n" + "\n".join(examples) + "\n\n" + ENVIRONMENT
        + "\n\n'crossmat COMMAND --help' lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="crossmat {" + ",".join(COMMANDS) + "} [options]",
    )
    p.add_argument("-V", "--version", action="store_true", help="print the installed version and exit")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _version() -> str:
    """The installed distribution's version (an editable install reports its pyproject version too)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crossmat")
    except PackageNotFoundError:
        return "unknown (not installed: run from a source checkout)"


def _target(cmd: Command) -> Callable[..., int | None]:
    module, func = cmd.target.split(":")
    return getattr(importlib.import_module(module), func)


def _help(name: str, cmd: Command) -> int:
    print(f"crossmat {name}: {cmd.summary}\n(options below are those of {cmd.target.split(':')[0]})\n")
    try:
        _target(cmd)(cmd.forward(["--help"]))
    except MissingExtraError as exc:
        print(f"crossmat {name}: error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 2
    print("\nexamples:\n" + "\n".join(f"  {ex}" for ex in cmd.examples))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``crossmat``. A reader that closes the pipe early (``crossmat generate --help | head``)
    ends the command quietly with the shell's SIGPIPE status, 141, instead of a traceback."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit, which would raise once more: point it at /dev/null first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"crossmat {_version()}")
        return 0
    args = parser.parse_args(argv)
    cmd = COMMANDS[args.command]
    if args.args in (["-h"], ["--help"]):
        return _help(args.command, cmd)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = _target(cmd)(cmd.forward(args.args))
    except MissingExtraError as exc:  # an optional part that is not installed: say which extra brings it
        print(f"crossmat {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # argparse errors and sys.exit() in the forwarded CLIs
        code = exc.code if isinstance(exc.code, int) or exc.code is None else (print(exc.code, file=sys.stderr) or 1)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
