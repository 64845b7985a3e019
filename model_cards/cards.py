"""Write complete Hugging Face Hub model cards (README.md) for every kind of CrossMat model.

A card is YAML metadata built with :class:`huggingface_hub.ModelCardData` (``library_name``,
``pipeline_tag``, ``tags``, ``datasets``, ``base_model``, ``metrics``, ``widget`` and a ``model-index``
built from :class:`huggingface_hub.EvalResult`) plus a body rendered from the Jinja templates in
``model_cards/templates``: usage snippets (tested by the test-suite), training data, leakage notes,
the training recipe, limitations and, when the caller passes one, an explanation section.

Cards render; they do not run models: the explanation section (e.g. ``interpretability.card_section``)
is computed by the caller and passed in as ``explanation``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from crossmat.modeling.configuration_crossmat import output_info

__all__ = ["KINDS", "build_model_card", "write_model_card"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
METRIC_KEYS = ("name", "type", "value", "dataset_name", "dataset_type", "split", "task_type")
EXTRA_KEYS = frozenset(
    {
        "model_name",
        "repo_id",
        "license",
        "tags",
        "examples",
        "description",
        "training_data",
        "leakage_notes",
        "limitations",
        "usage",
        "property_name",
        "property_unit",
        "class_labels",  # [class 0, class 1] of a classifier with text labels; the config's id2label carries them
        "benchmark",
    }
)
# A Hub dataset id ("name" or "owner/name"); anything else (local paths, descriptions) goes to the prose.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
BENCHMARK_TAGS = {"matbench": "matbench", "llm4mat": "llm4mat-bench"}


@dataclass(frozen=True)
class _Kind:
    label: str
    pipeline_tag: str | None
    library_name: str
    tags: tuple[str, ...]
    description: str
    limitations: tuple[str, ...]
    crossmat_model: bool = True  # a CrossMat formula model: remote code, generated usage, composition-only caveats


_COMMON_LIMITATIONS = (
    "Composition only: the model sees element fractions, not the crystal structure, so polymorphs of one "
    "formula (e.g. rutile and anatase TiO2) get the same output.",
    "Formulas are read as sets of (element, molar fraction) pairs; amounts are normalised, so `Fe2O3` and "
    "`Fe4O6` are the same input. Charges, oxidation states, defects and dopant sites are not represented.",
    "Inputs longer than the tokenizer's `model_max_length` (256 tokens) are rejected rather than truncated.",
)

KINDS: dict[str, _Kind] = {
    "clm-mlm": _Kind(
        label="Chemical language model (masked-element pretraining)",
        pipeline_tag="fill-mask",
        library_name="transformers",
        tags=("masked-lm", "pretraining"),
        description=(
            "A CrossMat chemical language model pretrained with masked-element modelling (MLM) on chemical "
            "formulas: it predicts a hidden element from the rest of the composition and that element's "
            "molar fraction. Use it as the starting point for property models."
        ),
        limitations=(
            "Pretrained representation only: it predicts no material property until fine-tuned.",
            "Masked-element predictions reflect the chemistry of the pretraining corpus, not thermodynamic "
            "stability; a top-ranked element is plausible in that corpus, not guaranteed to form a compound.",
        ),
    ),
    "clm-imkt": _Kind(
        label="Chemical language model with implicit knowledge transfer (imKT: MLM + structure alignment)",
        pipeline_tag="feature-extraction",
        library_name="transformers",
        tags=("imkt", "cross-modal", "knowledge-transfer", "pretraining"),
        description=(
            "A CrossMat chemical language model pretrained with implicit cross-modal knowledge transfer "
            "(imKT): masked-element modelling plus an alignment loss that pulls each formula embedding onto "
            "the embedding a structure model gives the compound's crystal. Fine-tune it for property "
            "prediction from composition alone."
        ),
        limitations=(
            "Pretrained representation only: it predicts no material property until fine-tuned.",
            "The aligned embedding inherits the biases of the structure model it was aligned to and only "
            "compositions with a known structure contributed to the alignment loss.",
        ),
    ),
    "property": _Kind(
        label="Property prediction from composition",
        pipeline_tag="text-classification",
        library_name="transformers",
        tags=("property-prediction",),
        description=(
            "A CrossMat model fine-tuned to predict a materials property from the chemical formula alone. "
            "Regression outputs are in physical units (the standardisation is stored in the config)."
        ),
        limitations=(
            "Predictions outside the chemistry of the training set (new element combinations, very "
            "different stoichiometries) are extrapolations; check them against the training distribution.",
        ),
    ),
    "lora-adapter": _Kind(
        label="LoRA adapter for property prediction",
        pipeline_tag="text-classification",
        library_name="peft",
        tags=("lora", "peft", "property-prediction"),
        description=(
            "A LoRA adapter (PEFT) that turns a CrossMat chemical language model into a property predictor. "
            "The folder holds the adapter weights, the property head's config and the tokenizer; the base "
            "model is loaded from `base_model`."
        ),
        limitations=(
            "Only valid on top of the exact base model it was trained with (see `base_model`).",
            "Predictions outside the chemistry of the training set are extrapolations.",
        ),
    ),
    "structure-predictor": _Kind(
        label="Structure-based predictor used for explicit knowledge transfer (exKT)",
        pipeline_tag=None,
        library_name="pytorch",
        tags=("exkt", "cross-modal", "crystal-structure"),
        description=(
            "A structure-based model used by CrossMat's explicit knowledge transfer (exKT): structures are "
            "generated from a formula and this model predicts the property from them."
        ),
        limitations=(
            "Its accuracy on generated structures is bounded by how close the generated structures are to "
            "the real ones; a wrong prototype gives a confident but wrong prediction.",
        ),
        crossmat_model=False,
    ),
    "cif-lm": _Kind(
        label="CIF language model (crystal-structure generator for explicit knowledge transfer, exKT)",
        pipeline_tag="text-generation",
        library_name="transformers",
        tags=("exkt", "cif", "crystal-structure-prediction", "text-generation"),
        description=(
            "A GPT-2 language model over CIF tokens (CrystaLLM-style): prompted with `data_<cell composition>`, it "
            "writes a crystal structure as CIF text. CrossMat samples several CIFs per formula, keeps the valid ones "
            "(they parse, match the prompt's composition, have sensible distances and density) and ranks them."
        ),
        limitations=(
            "Generated CIFs are unrelaxed guesses; validate and, where it matters, relax them (e.g. with CHGNet) "
            "before trusting a property predicted from them.",
            "It writes structures like those it was trained on (element set, cell sizes up to its context length).",
        ),
        crossmat_model=False,
    ),
}

_DEFAULT_EXAMPLES = ["Fe2O3", "LiCoO2", "SrTiO3"]


def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - markdown/python output, not HTML
    )


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _count_parameters(model_dir: Path) -> int | None:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.startswith("forest."):  # a blended forest's nodes are data, not parameters
                    continue
                shape = handle.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= int(d)
                total += n
    return total


def _eval_results(metrics: list[Mapping[str, Any]]) -> list[EvalResult]:
    results = []
    for i, m in enumerate(metrics):
        missing = [k for k in METRIC_KEYS if k not in m]
        if missing:
            raise ValueError(f"metrics[{i}] lacks {missing}; each metric needs {list(METRIC_KEYS)}")
        try:
            value = float(m["value"])
        except (TypeError, ValueError):
            raise ValueError(f"metrics[{i}] value {m['value']!r} is not a number") from None
        if value != value:  # NaN
            raise ValueError(f"metrics[{i}] value is NaN; a card must not publish a missing result")
        results.append(
            EvalResult(
                task_type=str(m["task_type"]),
                task_name=m.get("task_name"),
                dataset_type=str(m["dataset_type"]),
                dataset_name=str(m["dataset_name"]),
                dataset_config=m.get("dataset_config"),
                dataset_split=str(m["split"]),
                metric_type=str(m["type"]),
                metric_name=str(m["name"]),
                metric_value=value,
                source_name=m.get("source_name"),
                source_url=m.get("source_url"),
            )
        )
    return results


def _recipe_text(recipe: Any) -> str | None:
    if recipe is None:
        return None
    if isinstance(recipe, (str, Path)) and Path(recipe).is_file():
        return Path(recipe).read_text(encoding="utf-8").strip()
    if isinstance(recipe, Mapping):
        return yaml.safe_dump(dict(recipe), sort_keys=False).strip()
    if isinstance(recipe, str):
        return recipe.strip()
    raise TypeError(f"recipe must be a mapping, a YAML string or a path to a file, got {type(recipe).__name__}")


def is_hub_dataset_id(value: str) -> bool:
    """True for a Hub dataset id (``name`` or ``owner/name``), False for local paths and descriptions."""
    if value.lower().endswith((".csv", ".gz", ".parquet", ".json", ".jsonl", ".xz", ".bz2")):
        return False
    return bool(_HUB_ID.match(value)) and not Path(value).expanduser().exists() and not value.startswith(("builtin", "in-memory"))


def _leakage_defaults(kind: str, datasets: list[str], benchmark: str | None = None) -> list[str]:
    notes = []
    if kind in ("property", "lora-adapter", "structure-predictor") and benchmark == "matbench":
        notes.append(
            "Test rows are never used for training or model selection: for MatBench the model evaluated on "
            "fold k is trained on rows with `test_fold != k` only."
        )
        notes.append(
            "Composition-only MatBench tasks built from structures contain polymorphs that share a formula, "
            "so one formula can appear in both training and test folds with different targets."
        )
    elif kind in ("property", "lora-adapter", "structure-predictor"):
        notes.append("Test rows are never used for training or model selection (early stopping uses the validation split).")
    if kind in ("clm-mlm", "clm-imkt"):
        notes.append(
            "Pretraining uses formulas (and, for imKT, structure-model embeddings), not downstream property "
            "labels; compositions seen in pretraining can still reappear in downstream test sets, so report "
            "downstream results with that overlap in mind."
        )
    if kind in ("property", "lora-adapter"):
        notes.append(
            "A pretrained backbone may have seen test-set compositions (never their targets) during "
            "pretraining; see the base model's card."
        )
    if not datasets:
        notes.append("No dataset ids were recorded for this model.")
    return notes


def _usage_blocks(kind: str, ctx: dict[str, Any], usage: str | None) -> list[dict[str, str]]:
    env = _env()
    blocks: list[dict[str, str]] = []
    if usage is not None:
        blocks.append({"text": "Python:", "lang": "python", "code": usage.strip()})
    elif not KINDS[kind].crossmat_model:
        raise ValueError(f"kind {kind!r} needs usage=<python snippet that loads and runs the model>")
    else:
        code = env.get_template(f"usage_{kind}.py.j2").render(**ctx).strip()
        blocks.append({"text": "Python (only `transformers` and `torch` are needed):", "lang": "python", "code": code})
    if kind == "property":
        blocks.append(
            {
                "text": "Batch prediction over a CSV or Parquet file (with the `crossmat` package installed; "
                "invalid formulas are reported per row, the rest are predicted):",
                "lang": "bash",
                "code": f"crossmat-predict --model {ctx['model_id']} --input candidates.csv --output predictions.csv "
                "--formula-column formula",
            }
        )
        blocks.append(
            {
                "text": "Interactive app (Gradio):",
                "lang": "bash",
                "code": f"python app.py --model {ctx['model_id']}",
            }
        )
    return blocks


def build_model_card(
    model_dir: str | Path,
    *,
    kind: str,
    base_model: str | Iterable[str] | None = None,
    datasets: Iterable[str] = (),
    recipe: Any = None,
    metrics: Iterable[Mapping[str, Any]] = (),
    explanation: str | None = None,
    **extra: Any,
) -> ModelCard:
    """Build (without writing) the :class:`ModelCard` that :func:`write_model_card` writes."""
    if kind not in KINDS:
        raise ValueError(f"unknown card kind {kind!r}; choose one of {sorted(KINDS)}")
    unknown = sorted(set(extra) - EXTRA_KEYS)
    if unknown:
        raise TypeError(f"unknown model card argument(s) {unknown}; allowed extras: {sorted(EXTRA_KEYS)}")
    spec = KINDS[kind]
    metrics = list(metrics)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if kind == "lora-adapter":
        if not (model_dir / "adapter_config.json").is_file():
            raise ValueError(f"{model_dir} has no adapter_config.json; is it a PEFT adapter folder?")
        if base_model is None:
            raise ValueError("kind 'lora-adapter' needs base_model (the model the adapter was trained on)")
    config = _read_config(model_dir)
    given = _as_list(datasets)
    datasets = [d for d in given if is_hub_dataset_id(d)]  # metadata: Hub ids only
    local_data = [d for d in given if d not in datasets]  # local files / descriptions: prose only
    benchmark = extra.get("benchmark")
    base_models = _as_list(base_model)
    model_name = str(extra.get("model_name") or model_dir.name)
    model_id = str(extra.get("repo_id") or model_dir.name)
    examples = _as_list(extra.get("examples")) or list(_DEFAULT_EXAMPLES)

    regression = output_info(config)["problem_type"] == "regression" if config else True
    names = config.get("target_names") or []
    units = config.get("target_units") or []
    prop_name = extra.get("property_name") or (", ".join(names) if names else None)
    prop_unit = extra.get("property_unit") or (", ".join(u for u in units if u) if units else None)
    prop = None
    if kind in ("property", "lora-adapter", "structure-predictor") and prop_name:
        prop = f"{prop_name} ({prop_unit})" if prop_unit else prop_name
        if kind != "structure-predictor":
            prop += " — regression" if regression else " — classification"
            classes = [str(v) for _, v in sorted((int(k), v) for k, v in (config.get("id2label") or {}).items())]
            if not regression and len(classes) == 2 and classes != ["0", "1"]:
                prop += f" (class 1: {classes[1]}, class 0: {classes[0]})"
            elif not regression and len(classes) > 2:
                prop += f" ({len(classes)} classes: {', '.join(classes)})"

    eval_results = _eval_results(metrics)
    metrics_rows = [
        {
            "dataset_name": m["dataset_name"],
            "split": m["split"],
            "name": m["name"],
            "value_str": f"{float(m['value']):.6g}",
        }
        for m in metrics
    ]
    tags = ["crossmat", "materials-science", "chemistry", "chemical-formula", *spec.tags,
            *([BENCHMARK_TAGS.get(benchmark, benchmark)] if benchmark else []), *_as_list(extra.get("tags"))]
    tags = list(dict.fromkeys(tags))
    widget = [{"text": e, "example_title": e} for e in examples] if spec.pipeline_tag == "text-classification" else None
    card_kwargs: dict[str, Any] = {}
    if widget:
        card_kwargs["widget"] = widget
    card_data = ModelCardData(
        model_name=model_name,
        license=str(extra.get("license") or "apache-2.0"),
        library_name=spec.library_name,
        pipeline_tag=spec.pipeline_tag,
        tags=tags,
        datasets=datasets or None,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        metrics=sorted({str(m["type"]) for m in metrics}) or None,
        eval_results=eval_results or None,
        **card_kwargs,
    )

    params = _count_parameters(model_dir)
    size_parts = []
    if config.get("hidden_size"):
        size_parts.append(
            f"hidden {config['hidden_size']}, {config.get('num_hidden_layers')} layers, "
            f"{config.get('num_attention_heads')} heads"
        )
    if params is not None:
        size_parts.append(f"{params / 1e6:.2f} M parameters")
    if config.get("forest_nodes") and float(config.get("forest_weight", 1.0)) < 1.0:
        size_parts.append(f"blended with a {config.get('forest_trees')}-tree random forest on "
                          f"{config.get('forest_features')} composition statistics (CrossMat weight "
                          f"{float(config['forest_weight']):.1f}, chosen on validation rows)")
    if config.get("same_composition_rows") and float(config.get("same_composition_weight", 0.0)) != 0.0:
        size_parts.append(f"a same-composition correction: a formula whose composition is among the "
                          f"{config['same_composition_rows']} stored training compositions moves by "
                          f"{float(config['same_composition_weight']):.2f} x (their mean target - its prediction), "
                          "the weight chosen on validation rows")
    if float(config.get("probability_temperature", 1.0)) != 1.0:
        size_parts.append(f"class probabilities at temperature {float(config['probability_temperature']):.3g} "
                          "(fitted on validation rows for the lowest log loss)")
    architecture = ", ".join(config.get("architectures") or []) or spec.label
    ctx = {
        "model_id": model_id,
        "example": examples[0],
        "examples": examples,
        "regression": regression,
        "property_phrase": (f"{prop_name} in {prop_unit}" if prop_unit else prop_name or "the property")
        if regression
        else "label and probability",
    }
    usage_blocks = _usage_blocks(kind, ctx, extra.get("usage"))
    input_notes = None
    if kind in ("property", "clm-mlm", "clm-imkt", "lora-adapter"):
        input_notes = (
            "Any formula a chemist would type: `Fe2O3`, `Li0.5Co0.5O2`, `(NH4)2SO4`, `CuSO4·5H2O`. With the "
            "`crossmat` package installed the tokenizer validates and canonicalises formulas and raises an "
            "error naming the row and the reason (unknown element, unbalanced bracket, ...). Without it the "
            "`composition-property-prediction` pipeline still rejects unknown elements and bad characters."
        )
    if explanation is not None and kind not in ("property", "lora-adapter"):
        raise ValueError(f"an explanation section is for property models, not kind {kind!r}")
    training_data = str(
        extra.get("training_data")
        or (
            "Trained on " + "; ".join(f"`{d}`" for d in [*datasets, *local_data]) + "."
            if datasets or local_data
            else "The training data were not recorded for this model."
        )
    )
    body = (
        _env()
        .get_template("card.md.j2")
        .render(
            title=model_name,
            description=str(extra.get("description") or spec.description),
            kind_label=spec.label,
            architecture=architecture,
            size="; ".join(size_parts) or None,
            base_model=base_models,
            property=prop,
            library_name=spec.library_name,
            needs_remote_code=spec.crossmat_model,
            usage_blocks=usage_blocks,
            input_notes=input_notes,
            metrics=metrics_rows,
            training_data=training_data,
            datasets=datasets,
            leakage_notes=_as_list(extra.get("leakage_notes")) + _leakage_defaults(kind, datasets or local_data, benchmark),
            recipe=_recipe_text(recipe),
            explanation=explanation.strip() if explanation else None,
            limitations=_as_list(extra.get("limitations")) + list(spec.limitations)
            + (list(_COMMON_LIMITATIONS) if spec.crossmat_model else []),
        )
    )
    body = re.sub(r"\n{3,}", "\n\n", body).strip()  # template blocks leave runs of blank lines
    content = f"---\n{card_data.to_yaml()}\n---\n\n{body}\n"
    return ModelCard(content)


def write_model_card(
    model_dir: str | Path,
    *,
    kind: str,
    base_model: str | Iterable[str] | None = None,
    datasets: Iterable[str] = (),
    recipe: Any = None,
    metrics: Iterable[Mapping[str, Any]] = (),
    explanation: str | None = None,
    **extra: Any,
) -> Path:
    """Write ``README.md`` (a complete Hub model card) into ``model_dir`` and return its path.

    ``kind``: ``clm-mlm``, ``clm-imkt``, ``property``, ``lora-adapter`` or ``structure-predictor``.
    ``metrics``: dicts with ``name, type, value, dataset_name, dataset_type, split, task_type`` (optional
    ``task_name``, ``dataset_config``, ``source_name``, ``source_url``), written to ``model-index``.
    ``recipe``: a mapping, YAML text or a path to the training config. Extras: ``model_name``,
    ``repo_id`` (Hub id used in the snippets; default the folder name), ``license``, ``tags``,
    ``examples`` (widget / snippet formulas), ``description``, ``training_data``, ``leakage_notes``,
    ``limitations``, ``usage`` (a Python snippet; required for ``structure-predictor``),
    ``property_name``, ``property_unit`` (default: ``config.target_names`` / ``target_units``).
    ``explanation``: a markdown section computed by the caller (e.g. ``interpretability.card_section``);
    the card does not run the model.
    """
    metrics = list(metrics)
    card = build_model_card(
        model_dir, kind=kind, base_model=base_model, datasets=datasets, recipe=recipe, metrics=metrics,
        explanation=explanation, **extra,
    )
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path
