"""The ``cif_lm`` stage: a GPT-2 CIF language model (the exKT structure generator) trained with the Hugging Face
``Trainer`` on structure tables, through ``accelerate launch train.py --config configs/cif_lm.yaml``.

Data: every table of ``data.train`` (a path or a list; a ``cif`` column) is rendered in each form of
``data.cif_forms`` and rounding of ``data.cif_decimals`` (:func:`dataset_builders.cif_corpus.build_cif_corpus`,
cached in ``<output>/corpus``); rejected rows go to ``rejected_rows.csv`` with the reason. A
``data.validation_fraction`` of the *compositions* (reduced formula of each parsed structure) is held out (all
forms and polymorphs of a composition on one side) for the
validation loss. Checkpoints (``checkpoints/checkpoint-<step>``, safetensors weights; the Trainer reads its
optimizer and RNG states back weights-only) every ``train.checkpoint_every`` steps; ``--resume`` continues from
the newest one after checking that the recipe is unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from .folder import DONE_FILE, StageRun, check_resume_recipe, printable_recipe, recipe_hash
from .recipe import RecipeError, StageRecipe

__all__ = ["train_cif_lm_stage"]

USAGE = """import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

tokenizer = PreTrainedTokenizerFast.from_pretrained("{model_id}")
model = GPT2LMHeadModel.from_pretrained("{model_id}")
prompt = tokenizer("data_SrTiO3\\n", add_special_tokens=False, return_tensors="pt").input_ids  # cell composition
torch.manual_seed(0)
out = model.generate(prompt, do_sample=True, top_k=10, max_new_tokens=model.config.n_positions - prompt.shape[1],
                     pad_token_id=tokenizer.pad_token_id)
print(tokenizer.decode(out[0]).split("\\n\\n")[0])  # one CIF; validate it before use
# with the crossmat package: explicit_transfer.cif_lm.CIFLanguageModelGenerator samples, validates and ranks"""


def _split_by_formula(corpus: pd.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, validation) over the kept rows, holding out whole formulas."""
    formulas = corpus.formula.astype(str).to_numpy()
    unique = np.unique(formulas)
    rng = np.random.default_rng(seed)
    n_val = int(round(fraction * len(unique))) if fraction > 0 else 0
    val = np.isin(formulas, rng.choice(unique, size=n_val, replace=False)) if n_val else np.zeros(len(formulas), bool)
    return ~val, val


def train_cif_lm_stage(recipe: StageRecipe, out: Path) -> StageRun:
    """Build the corpus, train, save model + tokenizer + card into ``out``; returns the ``StageRun``."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from crossmat.dataset_builders.cif_corpus import CorpusError, build_cif_corpus
    from crossmat.dataset_builders.cif_text import build_cif_tokenizer
    from crossmat.modeling.cif_lm import new_cif_lm

    out = Path(out)
    data, train = recipe.data, recipe.train
    set_seed(recipe.seed)
    tokenizer = build_cif_tokenizer()
    cfg = {"n_embd": 128, "n_layer": 4, "n_head": 4, "n_positions": 512, "dropout": 0.0, **recipe.model.config}
    sources = data.train if isinstance(data.train, list) else [data.train]
    try:
        corpus = build_cif_corpus(sources, tokenizer, out / "corpus", forms=data.cif_forms, decimals=data.cif_decimals,
                                  max_tokens=int(cfg["n_positions"]), cif_column=data.cif_column,
                                  id_column=data.id_column, progress=train.progress_bar)
    except CorpusError as err:
        raise RecipeError(f"data.train: {err}") from None
    rejected = corpus[corpus.reason.notna()]
    kept = corpus[corpus.reason.isna()].reset_index(drop=True)
    if kept.empty:
        raise RecipeError(f"data.train: no usable CIF ({len(rejected)} rejected; first: "
                          f"{rejected.iloc[0][['source', 'row', 'reason']].to_dict() if len(rejected) else None})")
    is_train, is_val = _split_by_formula(kept, float(data.validation_fraction), data.split_seed)
    # plain lists of examples (a map-style dataset for the Trainer): nothing to convert, no datasets/pyarrow needed
    train_ds = [{"input_ids": np.asarray(ids).tolist()} for ids in kept.input_ids[is_train]]
    val_ds = [{"input_ids": np.asarray(ids).tolist()} for ids in kept.input_ids[is_val]] if is_val.any() else None

    init = recipe.model.init_from
    if init:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(init, use_safetensors=True)
    else:
        model = new_cif_lm(tokenizer, **{k: cfg[k] for k in ("n_embd", "n_layer", "n_head", "n_positions", "dropout")})
    batch = 32 if train.batch_size == "auto" else int(train.batch_size)
    steps_per_epoch = math.ceil(len(train_ds) / batch)
    total = train.max_steps or steps_per_epoch * train.epochs
    warmup = train.warmup_steps if train.warmup_steps is not None else int(train.warmup_ratio * total)
    mp = train.mixed_precision
    if mp == "auto":
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "no"
    trackers = [] if train.trackers in ("none", None, [], "auto") else ([train.trackers] if isinstance(train.trackers, str) else list(train.trackers))
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), max_steps=total, per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch, gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate, weight_decay=train.weight_decay, adam_beta1=train.adam_betas[0],
        adam_beta2=train.adam_betas[1], lr_scheduler_type=train.lr_scheduler, warmup_steps=warmup,
        max_grad_norm=train.max_grad_norm or 0.0, logging_steps=train.log_every, save_strategy="steps",
        save_steps=train.checkpoint_every, save_total_limit=train.keep_checkpoints,
        eval_strategy="steps" if val_ds is not None and train.eval_every else "no", eval_steps=train.eval_every,
        report_to=trackers, seed=recipe.seed, data_seed=recipe.seed, bf16=mp == "bf16", fp16=mp == "fp16",
        disable_tqdm=not train.progress_bar, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    resume_from = None
    if train.resume and (out / "checkpoints").is_dir():
        resume_from = get_last_checkpoint(str(out / "checkpoints"))
        if resume_from:
            check_resume_recipe(recipe, out, Path(resume_from))
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(printable_recipe(recipe), sort_keys=False))
    rejected.drop(columns=["text", "input_ids"]).to_csv(out / "rejected_rows.csv", index=False)
    print(f"[crossmat] stage {recipe.name!r} (cif_lm): {len(kept)} CIF texts kept ({int(is_train.sum())} train, "
          f"{int(is_val.sum())} validation), {len(rejected)} rejected (see {out / 'rejected_rows.csv'}); {total} steps"
          + (f"; resuming from {resume_from}" if resume_from else ""))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics: dict[str, dict[str, float]] = {}
    if val_ds is not None:
        ev = trainer.evaluate()
        metrics["validation"] = {"loss": float(ev["eval_loss"]), "perplexity": float(math.exp(ev["eval_loss"]))}
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        (out / "training_args.bin").unlink(missing_ok=True)  # the Trainer's pickle: never read, not shipped
        tokenizer.save_pretrained(str(out))
        info = {"stage": "cif_lm", "name": recipe.name, "recipe_hash": recipe_hash(recipe),
                "model": {"parameters": int(sum(p.numel() for p in model.parameters())), **cfg},
                "data": {"sources": [str(s) for s in sources], "structures": int(corpus.drop_duplicates(["source", "row"]).shape[0]),
                         "texts_kept": len(kept), "texts_train": int(is_train.sum()), "texts_validation": int(is_val.sum()),
                         "rejected": len(rejected), "forms": list(data.cif_forms), "decimals": list(data.cif_decimals),
                         "train_tokens": int(kept.n_tokens[is_train].sum())},
                "training": {"steps": int(result.global_step), "train_loss": float(result.training_loss),
                             "runtime_s": float(result.metrics.get("train_runtime", float("nan")))},
                "metrics": metrics}
        (out / DONE_FILE).write_text(json.dumps(info, indent=2, default=str))
        write_cif_lm_card(out)
        print(f"[crossmat] cif_lm done: model -> {out}" + (f"; validation loss {metrics['validation']['loss']:.4f}" if metrics else ""))
    trainer.accelerator.wait_for_everyone()
    return StageRun(out, model.eval() if trainer.is_world_process_zero() else None, None)


def write_cif_lm_card(out: Path, csp: Mapping[str, Any] | None = None) -> Path:
    """(Re)write a trained CIF LM folder's card from its ``training_info.json`` and ``recipe.yaml``; ``csp``: measured
    crystal-structure-prediction numbers to report (``dataset``, ``split``, ``n_targets``, ``samples_per_formula``,
    ``validity``, ``match_at_1``, ``match_at_20``, ``how``), e.g. from
    benchmarks/explicit_transfer/run_cif_lm_constrained.py."""
    from crossmat.model_cards import write_model_card

    out = Path(out)
    info = json.loads((out / DONE_FILE).read_text())
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    sources = info["data"]["sources"]
    val = info.get("metrics", {}).get("validation")
    val_text = (f" Validation loss {val['loss']:.4f} (perplexity {val['perplexity']:.3f}) on held-out formulas."
                if val else "")
    metrics: list[dict[str, Any]] = []
    csp_text = ""
    if csp:
        for key, name in (("validity", "valid CIFs"), ("match_at_1", "match rate @1"), ("match_at_20", "match rate @20")):
            if csp.get(key) is not None:
                metrics.append({"name": f"{name} ({csp['n_targets']} {csp['split']} formulas)", "type": key,
                                "value": float(csp[key]), "dataset_name": csp["dataset"], "dataset_type": csp["dataset"],
                                "split": csp["split"], "task_type": "crystal-structure-prediction"})
        csp_text = (f"\n\nMeasured on {csp['n_targets']} {csp['dataset']} {csp['split']} formulas x {csp['samples_per_formula']} "
                    f"samples ({csp.get('how', '')}): {csp['validity']:.1%} valid CIFs, match@1 {csp['match_at_1']:.1%}, "
                    f"match@20 {csp['match_at_20']:.1%}.")
    return write_model_card(
        out, kind="cif-lm", datasets=[str(s) for s in sources], recipe=recipe, metrics=metrics,
        usage=USAGE.format(model_id=out.name), leakage_notes=[
            "Crystal-structure-prediction scores are valid only for formulas whose structures were not in the "
            "training tables: for perov_5 train on the `train` split only, never on val/test structures."],
        training_data=(f"{info['data']['structures']} structures from " + ", ".join(f"`{Path(s).name}`" for s in sources)
                       + f", rendered as {', '.join(info['data']['forms'])} CIFs ({info['data']['texts_kept']} texts, "
                       f"{info['data']['rejected']} rejected and listed in `rejected_rows.csv`); "
                       f"{info['training']['steps']} steps.{val_text}{csp_text}"),
    )

