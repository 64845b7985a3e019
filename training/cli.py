"""Command line of ``train.py``: ``accelerate launch train.py [--config RECIPE] [--output-dir DIR] [--resume]
[--push-to-hub REPO] [key=value ...]``; with no ``--config`` it runs ``configs/quickstart.yaml``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crossmat.dataset_builders.common import describe_write_error
from crossmat.dataset_builders.paths import resolve_recipe

from .recipe import RecipeError, load_recipe
from .stages import run_recipe

QUICKSTART = "quickstart"  # the shipped recipe crossmat/configs/quickstart.yaml


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="CrossMat training (MLM, imKT, finetune/LoRA) with Accelerate. Run through "
        "`accelerate launch train.py ...` for multi-process / GPU / mixed precision.",
    )
    p.add_argument("--config", help="YAML recipe: a file, or a shipped recipe by name (quickstart, own_data, mlm, imkt, lora_finetune, "
                   "cif_lm, ...); default: quickstart")
    p.add_argument("--output-dir", help="output folder (default: outputs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final stage's folder to this Hub repo")
    p.add_argument("overrides", nargs="*", help="recipe overrides key.sub=value (pipelines: <stage>.key=value)")
    return p


def _check_writable(folder: Path) -> None:
    """Fail before any data loading or training when ``folder`` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        msg = describe_write_error(err, folder)
        raise RecipeError(f"output folder {str(folder)!r} is not writable: {msg or err}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        _shutdown_process_group()


def _shutdown_process_group() -> None:
    """Tear the torch.distributed group down before the interpreter exits (``accelerate launch`` with several
    processes): left to interpreter teardown, a gloo worker could abort with "terminate called without an
    active exception" after its work was done, failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    output_dir = Path(args.output_dir or "outputs")
    try:
        config = resolve_recipe(args.config or QUICKSTART)
    except FileNotFoundError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(config)
        if args.resume:
            overrides.append("train.resume=true")
        if args.push_to_hub:
            if "pipeline" in recipe:
                last = recipe["pipeline"][-1].get("name")
                overrides.append(f"{last}.push_to_hub={args.push_to_hub}" if last else f"push_to_hub={args.push_to_hub}")
            else:
                overrides.append(f"push_to_hub={args.push_to_hub}")
        name = recipe.get("name") or config.stem
        output_dir = Path(args.output_dir) if args.output_dir else Path("outputs") / str(name)
        _check_writable(output_dir)
        out = run_recipe(recipe, output_dir, overrides)
    except RecipeError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:  # a full / read-only disk while writing checkpoints or the model
        msg = describe_write_error(err, output_dir)
        if msg is None:
            raise
        print(f"train.py: error: {msg}. Finished stages and complete checkpoints under {output_dir} are kept: "
              "free space (or fix the folder) and rerun with --resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted. Finished stages and complete checkpoints under {output_dir} are kept: rerun "
              "the same command with --resume to continue", file=sys.stderr)
        return 130
    print(f"[crossmat] all outputs under {output_dir}; final model: {out}")
    return 0
