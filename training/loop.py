"""The Accelerate training loop shared by all stages.

Determinism and exact resume: the global batch of every optimizer step is a slice of an epoch
permutation drawn from ``seed + epoch``; with ``P`` processes each takes its ``1/P`` share of that
global batch, so the optimisation is the same on one CPU, one GPU or many (up to float reduction
order and dropout masks, which are reseeded from ``(seed, step, process)`` before every step). MLM
masks are a hash of ``(seed, epoch, row, position)``. Checkpoints (``accelerator.save_state``:
model, optimizer, scheduler, RNG; the loop state as JSON) are written atomically every ``checkpoint_every``
steps; ``resume`` restarts from the newest one and replays nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import get_scheduler

from .anchor import EmbeddingAnchor
from .collator import hash_uniform, trim_padding
from .data import StageData, TensorSplit
from .folder import latest_checkpoint
from .progress import training_progress
from .recipe import RecipeError, StageRecipe, resolve_stage, stage_kind
from .structure_aux import StructureAuxiliary, structure_vectors

__all__ = ["LoopState", "StageTrainer", "auto_batch_size", "compute_metrics", "latest_checkpoint", "make_accelerator"]

SWA_FILE = "swa_average.safetensors"  # running stochastic-weight average, saved with each checkpoint
FAULT_ENV = "CROSSMAT_TRAIN_FAULT_AFTER_STEP"  # testing hook: SIGKILL this process after that step
_HIGHER_IS_BETTER = {"roc_auc", "accuracy", "r2", "masked_accuracy", "alignment_cosine"}


LOOP_STATE_FILE = "loop_state.json"


def _read_loop_state(path: Path) -> dict[str, Any]:
    """The JSON loop state of a checkpoint, checked against :class:`LoopState`'s keys."""
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"train.resume: cannot read {path} ({err})") from None
    expected = set(LoopState().state_dict())
    if not isinstance(state, dict) or set(state) != expected:
        raise RecipeError(f"train.resume: {path} does not hold a loop state (expected keys {sorted(expected)})")
    return state


def auto_batch_size(rows: int) -> int:
    """``train.batch_size: auto``: the largest power of two <= rows / 16 (so an epoch has >= 16 steps),
    between 16 and 128; a training split of fewer than 16 rows trains in one batch of the largest power of two
    that fits it."""
    if rows < 16:
        return 2 ** int(math.floor(math.log2(max(rows, 1))))
    return int(min(128, max(16, 2 ** int(math.floor(math.log2(rows / 16))) if rows >= 32 else 16)))


class LoopState:
    """Loop counters, early-stopping state and metric history, saved with every checkpoint."""

    def __init__(self) -> None:
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.samples_seen = 0
        self.swa_count = 0
        self.swa_guard: dict[str, Any] | None = None  # what train.swa_guard_z decided

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.__dict__.update(state)


def make_accelerator(recipe: StageRecipe | Mapping[str, Any], output_dir: Path) -> Accelerator:
    """An ``Accelerator`` with the recipe's mixed precision and trackers (TensorBoard/W&B when installed)."""
    train = (recipe if isinstance(recipe, StageRecipe) else resolve_stage(recipe)).train
    mp = train.mixed_precision
    if mp == "auto":
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "no"
    trackers = train.trackers
    if trackers == "auto":
        import importlib.util

        trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    elif trackers in ("none", None, []):
        trackers = None
    # torchrun-style multi-process launch (accelerate launch --multi_gpu --num_processes N) on a machine
    # without GPUs: run DDP on CPU over gloo instead of falling back to N independent single-process runs.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=mp, log_with=trackers, project_dir=str(output_dir), cpu=cpu,
                       step_scheduler_with_optimizer=False)


_LAYER = re.compile(r"(?:^|\.)crossmat\.layers\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)crossmat\.embeddings\.")


def parameter_groups(model: torch.nn.Module, weight_decay: float, layer_lr_decay: float,
                     learning_rate: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay for biases and norms; with ``layer_lr_decay`` < 1 the encoder layer
    ``i`` of ``L`` trains at ``lr * decay ** (L - i)`` and the embeddings at ``lr * decay ** (L + 1)`` (layer-wise
    learning-rate decay, to keep what a pretrained backbone learned), the head at the full rate."""
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = 0
        if layer_lr_decay != 1.0:
            m = _LAYER.search(name)
            depth = n_layers - int(m.group(1)) if m else (n_layers + 1 if _EMBEDDINGS.search(name) else 0)
        no_decay = p.ndim < 2 or "norm" in name
        groups.setdefault((no_decay, layer_lr_decay**depth), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr": learning_rate * scale}
            for (nd, scale), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))]


def compute_metrics(stage: Any, pred: Mapping[str, np.ndarray], split: TensorSplit, config: Any) -> dict[str, float]:
    """Validation/test metrics from per-row predictions (see :meth:`StageTrainer.predict`); the stage
    (object or ``stage:`` name) decides which."""
    kind = stage_kind(stage) if isinstance(stage, str) else stage
    return kind.metrics(pred, split, config)


def swa_guard_decision(errors_average: np.ndarray, errors_best: np.ndarray, z: float) -> tuple[float, bool]:
    """Paired per-row comparison of two models' validation errors: ``(mean difference / its standard error,
    keep the best checkpoint?)``; the checkpoint wins only when it is better by more than ``z`` SE."""
    diff = np.asarray(errors_average, dtype=np.float64) - np.asarray(errors_best, dtype=np.float64)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    score = float(diff.mean()) / se if se > 0 else 0.0
    return score, score > z


class StageTrainer:
    """Runs one stage's optimisation with Accelerate (see module docstring)."""

    def __init__(self, recipe: StageRecipe | Mapping[str, Any], model: torch.nn.Module, data: StageData,
                 output_dir: Path, accelerator: Accelerator) -> None:
        recipe = recipe if isinstance(recipe, StageRecipe) else resolve_stage(recipe)
        self.recipe = recipe
        self.kind = recipe.kind
        self.stage = recipe.stage
        self.cfg = recipe.train
        self.seed = int(recipe.seed)
        self.data = data
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.collator = self.kind.collator(self.cfg.mlm_probability, self.seed, getattr(model, "config", None))
        self.global_batch = auto_batch_size(len(data.train)) if self.cfg.batch_size == "auto" else int(self.cfg.batch_size)
        self.accum = int(self.cfg.gradient_accumulation_steps)
        if self.global_batch % self.world:
            raise RecipeError(f"train.batch_size {self.global_batch} is not divisible by the {self.world} processes")
        self.local_batch = self.global_batch // self.world
        n = len(data.train)
        per_step = self.global_batch * self.accum
        self.steps_per_epoch = n // per_step
        if self.steps_per_epoch == 0:
            raise RecipeError(
                f"the training split has {n} rows, fewer than one optimizer step needs "
                f"(batch_size {self.global_batch} x gradient_accumulation_steps {self.accum}); lower train.batch_size"
            )
        self.total_steps = int(self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch)
        self.eval_every = int(self.cfg.eval_every or self.steps_per_epoch)
        self.state = LoopState()
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.best_dir = self.output_dir / "checkpoints" / "best"
        self.model = model
        epochs_total = math.ceil(self.total_steps / self.steps_per_epoch)
        self.swa_start_epoch = epochs_total - int(self.cfg.swa_epochs) if self.cfg.swa_epochs else None
        self.swa: dict[str, torch.Tensor] = {}
        # the frozen teacher is copied before any step (and before a resume loads fine-tuned weights)
        self.anchor = (EmbeddingAnchor(model, float(self.cfg.anchor_weight)).to(accelerator.device)
                       if float(self.cfg.anchor_weight) > 0 else None)
        # train.structure_aux_weight: the training rows' structure vectors and a linear read-out (structure_aux.py)
        self.structure_aux = None
        self.aux_head: torch.nn.Module | None = None
        if float(self.cfg.structure_aux_weight) > 0:
            self.structure_aux = StructureAuxiliary(
                structure_vectors(recipe.data.structure_targets, recipe.data.embedding_column), data.train.formulas,
                int(model.config.hidden_size), float(self.cfg.structure_aux_weight), self.seed)
            data.info["structure_aux"] = self.structure_aux.summary()
            accelerator.print(f"[crossmat] structure auxiliary: {self.structure_aux.rows_with_target} of "
                              f"{len(data.train)} training rows have a {self.structure_aux.dim}-d structure vector "
                              f"(weight {self.structure_aux.weight:g})")
        # train.freeze_encoder_epochs toggles the encoder parameters that train now (before any step)
        self._encoder_params = ([p for n, p in model.named_parameters() if p.requires_grad and "head" not in n.split(".")]
                                if int(self.cfg.freeze_encoder_epochs) > 0 else [])
        self._build_optimizer()

    # ----------------------------------------------------------------- setup
    def _build_optimizer(self) -> None:
        groups = parameter_groups(self.model, float(self.cfg.weight_decay), float(self.cfg.layer_lr_decay),
                                  float(self.cfg.learning_rate))
        modules: list[torch.nn.Module] = [self.model]
        if self.structure_aux is not None:  # the read-out trains at the full rate, saved with every checkpoint
            groups.append({"params": list(self.structure_aux.head.parameters()),
                           "weight_decay": float(self.cfg.weight_decay), "lr": float(self.cfg.learning_rate)})
            modules.append(self.structure_aux.head)
        optimizer = torch.optim.AdamW(groups, lr=float(self.cfg.learning_rate), betas=tuple(self.cfg.adam_betas))
        warmup = self.cfg.warmup_steps
        if warmup is None:
            warmup = int(math.ceil(float(self.cfg.warmup_ratio) * self.total_steps))
        scheduler = get_scheduler(self.cfg.lr_scheduler, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=self.total_steps)
        *prepared, self.optimizer, self.scheduler = self.accelerator.prepare(*modules, optimizer, scheduler)
        self.model = prepared[0]
        self.aux_head = prepared[1] if self.structure_aux is not None else None
        # the loop state is saved as JSON (LOOP_STATE_FILE), not registered with accelerate: its custom
        # checkpoints are pickles loaded with weights_only=False, i.e. code execution from a checkpoint folder

    def _freeze_encoder(self, frozen: bool) -> None:
        """``train.freeze_encoder_epochs``: the encoder parameters that train (not the frozen element table, not
        the base weights under LoRA) get no gradient while the head learns on the pretrained features (AdamW skips
        them: no update, no weight decay), then train with it: linear probing, then fine-tuning, so that a random
        head does not distort the pretrained features."""
        for param in self._encoder_params:
            param.requires_grad_(not frozen)

    # ----------------------------------------------------------------- data
    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.data.train)
        if self.data.train.weights is not None:  # thermodynamic bias: sample rows by stability weight
            return torch.multinomial(self.data.train.weights, n, replacement=True, generator=gen)
        return torch.randperm(n, generator=gen)

    def _batch(self, split: TensorSplit, rows: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        batch = trim_padding({k: v[rows] for k, v in split.tensors.items()})
        if self.collator is not None:
            self.collator.set_epoch(epoch)
            batch = self.collator.mask_batch(batch)
        batch.pop("row_id")
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # ----------------------------------------------------------------- logging / checkpoints
    def _log(self, record: dict[str, Any]) -> None:
        record = {"stage": self.stage, "step": self.state.global_step, "epoch": self.state.epoch, **record}
        if self.accelerator.is_main_process:
            with self.metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        numeric = {f"{record.get('split', 'train')}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and k not in ("step", "epoch")}
        if self.accelerator.trackers:
            self.accelerator.log(numeric, step=self.state.global_step)

    def _truncate_metrics(self, step: int) -> None:
        if not self.accelerator.is_main_process or not self.metrics_path.is_file():
            return
        lines = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step and json.loads(ln).get("split") != "test"]
        self.metrics_path.write_text("".join(ln + "\n" for ln in kept))

    def _save_checkpoint(self) -> None:
        acc = self.accelerator
        root = self.output_dir / "checkpoints"
        final = root / f"step_{self.state.global_step:09d}"
        tmp = root / f"tmp_step_{self.state.global_step:09d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process and self.swa:
            save_file(self.swa, str(tmp / SWA_FILE))
        if acc.is_main_process:
            (tmp / LOOP_STATE_FILE).write_text(json.dumps(self.state.state_dict()))
            (tmp / "COMPLETE").write_text(json.dumps(self.state.state_dict()))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            old = sorted(p for p in root.glob("step_*") if p.is_dir())
            for p in old[: -int(self.cfg.keep_checkpoints)]:
                shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()

    def _resume(self) -> None:
        resume = self.cfg.resume
        if not resume:
            return
        ckpt = Path(resume) if isinstance(resume, str) and resume not in ("auto", "true") else latest_checkpoint(self.output_dir)
        if ckpt is None:
            self.accelerator.print(f"[crossmat] resume: no checkpoint in {self.output_dir / 'checkpoints'}; starting fresh")
            return
        if not (ckpt / "COMPLETE").is_file():
            raise RecipeError(f"train.resume: {ckpt} is not a complete checkpoint")
        pickles = sorted(p.name for p in ckpt.glob("custom_checkpoint_*"))
        if pickles or not (ckpt / LOOP_STATE_FILE).is_file():
            raise RecipeError(f"train.resume: {ckpt} " + (f"holds pickled objects {pickles}" if pickles else f"has no {LOOP_STATE_FILE}")
                              + " (a checkpoint from an older version, or not written by crossmat); it is not loaded, "
                              "since unpickling can run code: start a fresh run")
        self.accelerator.load_state(str(ckpt))
        self.state.load_state_dict(_read_loop_state(ckpt / LOOP_STATE_FILE))
        self.swa = load_file(str(ckpt / SWA_FILE)) if (ckpt / SWA_FILE).is_file() else {}
        self._truncate_metrics(self.state.global_step)
        self.accelerator.print(f"[crossmat] resumed from {ckpt} at step {self.state.global_step}")

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, split: TensorSplit) -> dict[str, np.ndarray]:
        """Per-row predictions on ``split`` (sharded over processes, gathered, in row order)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        idx = torch.arange(self.rank, len(split), self.world)
        parts: dict[str, list[np.ndarray]] = {}
        for chunk in idx.split(int(self.cfg.eval_batch_size)):
            batch = self._batch(split, chunk, epoch=0)
            with self.accelerator.autocast():
                out = model(**batch)
            rec: dict[str, torch.Tensor] = {"index": chunk, **self.kind.batch_outputs(out, batch)}
            for k, v in rec.items():
                parts.setdefault(k, []).append(v.detach().cpu().numpy())
        mine = {k: np.concatenate(v) for k, v in parts.items()} if parts else {}
        gathered = gather_object([mine]) if self.world > 1 else [mine]
        gathered = [g for g in gathered if g]
        merged = {k: np.concatenate([g[k] for g in gathered]) for k in gathered[0]}
        order = np.argsort(merged.pop("index"), kind="stable")
        if was_training:
            model.train()
        return {k: v[order] for k, v in merged.items()}

    def evaluate(self, split: TensorSplit, name: str) -> dict[str, float]:
        cfg = self.accelerator.unwrap_model(self.model).config
        return self.kind.metrics(self.predict(split), split, cfg)

    def metric_for_best(self) -> tuple[str, bool]:
        name = self.cfg.metric_for_best
        if name is None:
            name = self.kind.default_metric.get(self.accelerator.unwrap_model(self.model).config.problem_type, "loss")
        return name, name in _HIGHER_IS_BETTER

    def _validate(self) -> bool:
        """Evaluate on the validation split, keep the best weights; return True to stop early."""
        if self.data.validation is None:
            return False
        metrics = self.evaluate(self.data.validation, "validation")
        self._log({"split": "validation", **metrics})
        name, higher = self.metric_for_best()
        if name not in metrics:
            raise RecipeError(f"train.metric_for_best {name!r} is not among the validation metrics {sorted(metrics)}")
        value = metrics[name]
        best = self.state.best_metric
        improved = best is None or (value > best if higher else value < best)
        if improved and math.isfinite(value):
            self.state.best_metric, self.state.best_step, self.state.bad_evals = float(value), self.state.global_step, 0
            if self.accelerator.is_main_process:
                self.best_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.best_dir / "model.safetensors.tmp"
                save_model(self.accelerator.unwrap_model(self.model), str(tmp))
                os.replace(tmp, self.best_dir / "model.safetensors")
                (self.best_dir / "best.json").write_text(json.dumps({"step": self.state.global_step, name: value}))
            self.accelerator.wait_for_everyone()
        else:
            self.state.bad_evals += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.state.bad_evals >= int(patience)

    # ----------------------------------------------------------------- stochastic weight averaging
    def _swa_update(self) -> None:
        """Fold the current weights into the running average (called at the end of each of the last
        ``train.swa_epochs`` epochs)."""
        n = self.state.swa_count
        with torch.no_grad():
            for name, p in self.accelerator.unwrap_model(self.model).named_parameters():
                if not p.requires_grad:
                    continue
                cur = p.detach().float().cpu()
                self.swa[name] = cur.clone() if n == 0 else self.swa[name] + (cur - self.swa[name]) / (n + 1)
        self.state.swa_count = n + 1

    def _swa_apply(self) -> None:
        """Replace the trained weights by their average over the SWA epochs (no batch norm to refresh)."""
        with torch.no_grad():
            for name, p in self.accelerator.unwrap_model(self.model).named_parameters():
                if name in self.swa:
                    p.copy_(self.swa[name].to(device=p.device, dtype=p.dtype))
        self.accelerator.print(f"[crossmat] weights averaged over the last {self.state.swa_count} epoch(s) (SWA)")

    def _swa_guard(self) -> None:
        """``train.swa_guard_z``: for a regression model, compare the weight average with the best-validation
        checkpoint on the validation rows, paired per row (|error| / target std, mean over targets); keep the
        checkpoint when it is better by more than ``z`` standard errors of the paired difference. The best
        checkpoint is the minimum over many evaluations, so small z would reward noise: 4 left all 25 finished
        default-route folds of five MatBench tasks on the average (max 2.6, benchmarks/training/best_vs_swa.log)
        and catches training that memorises, e.g. targets that the formula does not determine."""
        z = self.cfg.swa_guard_z
        split = self.data.validation
        model = self.accelerator.unwrap_model(self.model)
        best = self.best_dir / "model.safetensors"
        if (z is None or split is None or len(split) < 2 or not self.kind.property_model
                or model.config.problem_type != "regression" or not best.is_file()):
            return
        labels = split.tensors["labels"].double().numpy().reshape(len(split), -1)
        std = np.asarray(model.config.target_std or [1.0] * labels.shape[1], dtype=np.float64)

        def row_errors() -> np.ndarray:
            pred = self.predict(split)["logits"].astype(np.float64).reshape(labels.shape)
            return (np.abs(pred - labels) / std).mean(1)

        e_swa = row_errors()
        averaged = {k: v.detach().clone() for k, v in model.state_dict().items()}
        load_model(model, str(best), device="cpu" if self.accelerator.device.type == "cpu" else str(self.accelerator.device))
        score, keep_best = swa_guard_decision(e_swa, row_errors(), float(z))
        if not keep_best:
            model.load_state_dict(averaged)
        self.state.swa_guard = {"z": round(score, 3), "kept": "best_checkpoint" if keep_best else "swa_average",
                                "best_step": self.state.best_step}
        self.accelerator.print(
            f"[crossmat] SWA guard: the best-validation checkpoint (step {self.state.best_step}) is "
            f"{score:.1f} SE {'better' if score > 0 else 'worse'} than the weight average on {len(split)} validation "
            f"rows; keeping {'the checkpoint' if keep_best else 'the average'} (threshold {float(z):g} SE)")

    # ----------------------------------------------------------------- training
    def run(self) -> tuple[dict[str, Any], dict[str, dict[str, float]], dict[str, np.ndarray] | None]:
        """Train, then score the validation and test splits: ``(training summary, metrics, test predictions)``
        (test predictions for property stages; collective: every process takes part)."""
        acc, data = self.accelerator, self.data
        if data.rejected is not None:
            acc.print(f"[crossmat] {len(data.rejected)} row(s) rejected; see {self.output_dir / 'rejected_rows.csv'}")
        if acc.log_with:
            acc.init_trackers(self.recipe.name or self.stage, config={"stage": self.stage, "seed": self.recipe.seed})
        acc.print(f"[crossmat] stage {self.recipe.name!r} ({self.stage}): {len(data.train)} train rows, "
                  f"{len(data.validation) if data.validation else 0} validation, {len(data.test) if data.test else 0} test; "
                  f"{self.total_steps} steps on {acc.num_processes} process(es), device {acc.device}")
        if "rows_with_structure_target" in data.info:
            counts = ", ".join(f"{k} {v}" for k, v in data.info["rows_with_structure_target"].items())
            acc.print(f"[crossmat] rows with a structure target: {counts}; the others train MLM only")
        summary = self.train()
        metrics: dict[str, Any] = {}
        validation = data.validation
        calibrating = (self.kind.property_model and self.recipe.train.calibrate and validation is not None
                       and not self.recipe.lora.enabled)
        temperature = self.fit_temperature(validation) if calibrating else {}  # before the blend chooses its weight
        if self.kind.property_model and self.recipe.train.forest_blend:
            skip = self.forest_blend_skipped(validation)
            if skip:
                acc.print(f"[crossmat] train.forest_blend={self.recipe.train.forest_blend}: no forest blend, {skip}")
                metrics["forest_blend"] = {"skipped": skip}
            else:
                metrics["forest_blend"], validation = self.blend_forest(validation)
        if calibrating and self.recipe.train.same_composition and self.accelerator.unwrap_model(
                self.model).config.problem_type in ("regression", "single_label_classification"):
            metrics["same_composition"], validation = self.fit_same_composition(validation)
        if calibrating:
            metrics["calibration"] = {**temperature, **self.calibrate(validation)}
        if validation is not None:
            metrics["validation"] = self.evaluate(validation, "validation")
        if data.test is not None:
            metrics["test"] = self.evaluate(data.test, "test")
            self._log({"split": "test", **metrics["test"]})
        test_pred = self.predict(data.test) if data.test is not None and self.kind.property_model else None
        return summary, metrics, test_pred

    def forest_blend_skipped(self, validation: TensorSplit | None) -> str | None:
        """Why ``train.forest_blend`` does not act on this model (None: it does): ``train.forest_blend_tasks``
        names the other task type (a fine-tuned classifier is single-label, of two classes or more), a LoRA adapter
        (it cannot carry the trees), or no validation rows to choose the forest's weight on."""
        cfg = self.recipe.train
        problem = self.accelerator.unwrap_model(self.model).config.problem_type
        task = "regression" if problem == "regression" else "classification"
        if cfg.forest_blend_tasks not in ("all", task):
            return f"train.forest_blend_tasks={cfg.forest_blend_tasks} and this is a {task} model"
        if self.recipe.lora.enabled:
            return "a LoRA adapter cannot carry the forest's trees (full fine-tuning can)"
        if validation is None or len(validation) < 2:
            return ("no validation rows to choose the forest's weight on (give data.validation or "
                    "data.validation_fraction > 0)")
        return None

    def blend_forest(self, validation: TensorSplit) -> tuple[dict[str, Any], TensorSplit]:
        """Fit the forest of ``train.forest_blend`` on the training + validation rows and blend it in with the
        weight the validation rows choose (``modeling.forest``); returns what was chosen and the validation split
        carrying the forest's out-of-bag outputs, so that its later scores stay out of sample."""
        from crossmat.modeling.forest import fit_forest_blend

        cfg = self.recipe.train
        model = self.accelerator.unwrap_model(self.model)
        oob, info = fit_forest_blend(model, self.data.train.tensors, validation.tensors, source=str(cfg.forest_blend),
                                     trees=int(cfg.forest_trees), max_nodes=int(cfg.forest_max_nodes), seed=self.seed)
        self.accelerator.print(
            f"[crossmat] forest blend ({info['features']} statistics, {info['trees']} trees, {info['nodes']} nodes): "
            f"CrossMat weight {info['weight']:.1f} chosen on {len(validation)} validation rows (loss CrossMat "
            f"{info['validation_loss_crossmat']:.4g}, forest out-of-bag {info['validation_loss_forest']:.4g}, "
            f"blend {info['validation_loss_blend']:.4g})" + ("" if info["installed"] else "; the forest is not kept"))
        return info, dataclasses.replace(validation, tensors={**validation.tensors, "forest_output": oob.cpu()})

    def fit_same_composition(self, validation: TensorSplit) -> tuple[dict[str, Any], TensorSplit]:
        """Choose the same-composition correction's weight on the validation rows (``modeling.same_composition``;
        on every process, so the models stay identical); returns what was chosen and the validation split carrying
        the rows' targets of the correction (their training rows' means), so that its later scores stay out of sample."""
        from crossmat.modeling.same_composition import MIN_ROWS, fit_same_composition

        model = self.accelerator.unwrap_model(self.model)
        held, info = fit_same_composition(model, self.data.train.tensors, validation.tensors,
                                         forest_output=validation.tensors.get("forest_output"))
        n = info["validation_rows_with_composition"]
        if n < MIN_ROWS:
            msg = f"{n} of {len(validation)} validation rows share their composition with training rows (< {MIN_ROWS}): no correction"
        else:
            msg = (f"weight {info['best_weight']:.2f} chosen on the {n} of {len(validation)} validation rows that share "
                   f"their composition with training rows (loss {info['validation_loss_without']:.4g} -> "
                   f"{info['validation_loss_with']:.4g}, change {info['loss_change']:.3g} ± {info['loss_change_se']:.2g} SE)"
                   + ("" if info["installed"] else f"; not kept (needs more than {info['min_se']:g} SE)"))
        self.accelerator.print(f"[crossmat] same-composition correction: {msg}")
        return info, dataclasses.replace(validation, tensors={**validation.tensors, "same_composition_target": held})

    def _held_out(self, split: TensorSplit) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
        """The unwrapped model and a held-out split's token ids, mask (on the model's device) and targets."""
        model = self.accelerator.unwrap_model(self.model)
        device = next(model.parameters()).device
        targets = split.targets if split.targets is not None else split.tensors["labels"].numpy()
        return model, split.tensors["input_ids"].to(device), split.tensors["attention_mask"].to(device), targets

    def fit_temperature(self, split: TensorSplit) -> dict[str, float]:
        """A classifier's probability temperature, fitted on held-out rows (``modeling.calibration``; on every
        process, so the models stay identical); ``{}`` for regression."""
        from crossmat.modeling.calibration import calibrate_temperature

        model, ids, mask, labels = self._held_out(split)
        chosen = calibrate_temperature(model, ids, mask, labels)
        if chosen:
            self.accelerator.print(
                f"[crossmat] probability temperature {chosen['temperature']:.3g} fitted on {len(split)} held-out "
                f"validation rows (log loss {chosen['log_loss_before_temperature']:.4g} -> {chosen['log_loss_after_temperature']:.4g})")
        return chosen

    def calibrate(self, split: TensorSplit) -> dict[str, float]:
        """Calibrate the trained property model on held-out rows (``modeling.calibration``): a standard deviation
        for every regression prediction, the decision threshold of a binary classifier, the class decision weights of
        one of three classes or more (on every process, so the
        models stay identical). Returns what was chosen."""
        from crossmat.modeling.calibration import calibrate_property_model

        model, ids, mask, targets = self._held_out(split)
        forest, same = split.tensors.get("forest_output"), split.tensors.get("same_composition_target")
        frequencies = None
        if model.config.problem_type == "single_label_classification" and model.num_labels > 2:
            train_labels = self.data.train.tensors["labels"].reshape(-1).long()
            frequencies = (torch.bincount(train_labels, minlength=model.num_labels).double() / len(train_labels)).numpy()
        result = calibrate_property_model(model, ids, mask, targets,
                                          forest_output=None if forest is None else forest.to(ids.device),
                                          same_composition_target=None if same is None else same.to(ids.device),
                                          class_frequencies=frequencies)
        chosen = {k: float(v) for k, v in result.as_dict().items()}
        if len(chosen) == 1:
            self.accelerator.print(f"[crossmat] {len(split)} validation rows: too few to calibrate an uncertainty")
        else:
            self.accelerator.print(f"[crossmat] calibrated on {len(split)} held-out validation rows: "
                                   + ", ".join(f"{k}={v:.4g}" for k, v in chosen.items()))
        return chosen

    def train(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or early stop), then load the best validation weights."""
        acc = self.accelerator
        set_seed(self.seed)
        self._resume()
        if self.state.global_step == 0 and acc.is_main_process and self.metrics_path.exists():
            self.metrics_path.unlink()
        fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
        self.model.train()
        bar = training_progress(self.total_steps, self.state.global_step, f"{self.stage}",
                                main_process=acc.is_local_main_process, bar=bool(self.cfg.progress_bar))
        t0, samples0 = time.perf_counter(), 0
        run_loss = torch.zeros((), device=acc.device)
        run_n = 0
        while self.state.global_step < self.total_steps and not self.state.stopped_early:
            perm = self._permutation(self.state.epoch)
            self._freeze_encoder(self.state.epoch < int(self.cfg.freeze_encoder_epochs))
            while self.state.step_in_epoch < self.steps_per_epoch and self.state.global_step < self.total_steps:
                step = self.state.global_step
                torch.manual_seed(int(hash_uniform(self.seed, step, self.rank, 7) * 2**31))
                for micro in range(self.accum):
                    start = (self.state.step_in_epoch * self.accum + micro) * self.global_batch
                    rows = perm[start + self.rank * self.local_batch: start + (self.rank + 1) * self.local_batch]
                    batch = self._batch(self.data.train, rows, self.state.epoch)
                    sync = micro == self.accum - 1
                    ctx = acc.no_sync(self.model) if not sync and self.world > 1 else _null()
                    with ctx, acc.autocast():
                        out = self.model(**batch)
                        loss = out.loss if self.anchor is None else out.loss + self.anchor.loss(batch, out.pooler_output)
                        if self.structure_aux is not None:
                            loss = loss + self.structure_aux.loss(rows, out.pooler_output, self.aux_head)
                        loss = loss / self.accum
                        acc.backward(loss)
                    run_loss += loss.detach()
                if self.cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), float(self.cfg.max_grad_norm))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                run_n += 1
                self.state.global_step += 1
                self.state.step_in_epoch += 1
                self.state.samples_seen += self.global_batch * self.accum
                samples0 += self.global_batch * self.accum
                bar.update(1, epoch=self.state.epoch,
                           loss=lambda rl=run_loss, rn=run_n: float(rl) / rn if rn else None)
                last = self.state.global_step >= self.total_steps
                if self.state.global_step % int(self.cfg.log_every) == 0 or last:
                    mean_loss = float(acc.reduce(run_loss, reduction="mean")) / max(run_n, 1)
                    rate = samples0 / max(time.perf_counter() - t0, 1e-9)
                    self._log({"split": "train", "loss": mean_loss, "learning_rate": self.scheduler.get_last_lr()[0],
                               "samples_per_second": rate})
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    run_loss.zero_()
                    run_n = 0
                if self.state.step_in_epoch >= self.steps_per_epoch:
                    self.state.epoch += 1
                    self.state.step_in_epoch = 0
                    if self.swa_start_epoch is not None and self.state.epoch > self.swa_start_epoch:
                        self._swa_update()
                if self.state.global_step % self.eval_every == 0 or last:
                    self.state.stopped_early = self._validate()
                if self.state.global_step % int(self.cfg.checkpoint_every) == 0 or last or self.state.stopped_early:
                    self._save_checkpoint()
                if fault_step and self.state.global_step == fault_step:
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.state.stopped_early:
                    break
                if self.state.step_in_epoch == 0:
                    break  # new epoch: draw the next permutation
        bar.close()
        if self.state.stopped_early:
            acc.print(f"[crossmat] early stopping at step {self.state.global_step} (best step {self.state.best_step})")
        if self.state.swa_count:
            self._swa_apply()  # the average, not the best validation checkpoint, is the final model ...
            self._swa_guard()  # ... unless the held-out rows say clearly otherwise
        elif (self.best_dir / "model.safetensors").is_file() and self.state.best_step is not None:
            load_model(acc.unwrap_model(self.model), str(self.best_dir / "model.safetensors"),
                       device="cpu" if acc.device.type == "cpu" else str(acc.device))
        acc.wait_for_everyone()
        return {"global_step": self.state.global_step, "best_step": self.state.best_step,
                "best_metric": self.state.best_metric, "metric_for_best": self.metric_for_best()[0],
                "stopped_early": self.state.stopped_early, "steps_per_epoch": self.steps_per_epoch,
                "swa_epochs_averaged": self.state.swa_count,
                "swa_guard": self.state.swa_guard,
                "total_steps": self.total_steps, "processes": self.world,
                "mixed_precision": acc.mixed_precision}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
