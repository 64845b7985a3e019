"""``CrossMatConfig``: hyper-parameters of the CrossMat formula encoder and its heads.

Travels as Hub remote code: imports transformers only.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

ALIGNMENT_LOSSES = ("cosine", "mse", "infonce")
ALIGNMENT_INPUTS = ("masked", "clean")
REGRESSION_LOSSES = ("l1", "mse", "huber")
POOLINGS = ("cls", "mean", "fraction_weighted")
FRACTION_ENCODINGS = ("projected", "sinusoid_table")
INTERVAL_LEVELS = (0.6827, 0.9545)  # the prediction intervals' nominal coverage: a Gaussian's share within 1 / 2 std


class CrossMatConfig(PretrainedConfig):
    """Configuration of a CrossMat chemical language model.

    The token-id layout (``digit_token_start`` ... ``num_elements``) must match the tokenizer: the
    model reads element amounts back from the digit tokens. Property heads store
    ``target_mean``/``target_std`` (one value per label) so regression outputs are in physical units,
    plus ``target_names``/``target_units`` for display.

    imKT pretraining: ``alignment_input`` is the formula the alignment loss reads. ``masked``: the pooled embedding
    of the MLM forward pass, whose every formula has at least one element masked or replaced. ``clean``: a second
    pass over the unmasked formula (the collator's ``clean_input_ids``), so the alignment target is predicted from the
    whole formula, as fine-tuning and inference see it (pretraining takes about twice as long).

    Composition-model options (see docs/models.md): ``element_features`` names a frozen per-element
    feature table (``element_feature_dim`` columns, stored in the weights, projected by a trained linear
    layer) that replaces the trainable element embedding; ``fraction_encoding`` is ``projected``
    (sinusoids of the fraction and log-fraction through a linear layer) or ``sinusoid_table`` (fixed
    CrabNet-style sinusoid tables added to the element vector with learned scales); ``fraction_jitter``
    multiplies fractions by ``1 + jitter * N(0, 1)`` during training only; ``ensemble_size`` property
    models average that many independently initialised encoder+head members and report their spread;
    ``target_min``/``target_max`` clip regression outputs (per label, ``None`` = open) at inference.
    ``structure_branch``: a property model also keeps a frozen copy of its pretrained encoder (never trained, shared
    by the ensemble members) whose pooled embedding joins the fine-tuned one at the head's input, so what the
    backbone learned before fine-tuning (for imKT: the structure knowledge of its pooled embedding) stays available.
    ``element_statistics``: a property model's head also reads composition statistics of a frozen per-element property
    table (``element_statistics_dim`` columns, e.g. ``magpie``, stored in the weights): the fraction-weighted mean and
    standard deviation, the minimum and the maximum of each property over the formula's elements, the descriptors of
    Magpie-style composition models, next to the pooled embedding.

    Calibrated uncertainty (set after training by ``crossmat.modeling.calibration``, never by hand):
    ``uncertainty_rows`` held-out calibration rows are stored in the weights (their pooled embeddings and
    residuals); a regression prediction's standard deviation is ``uncertainty_scale`` times the shrunken RMS
    residual of its ``uncertainty_k`` nearest calibration rows (cosine similarity of pooled embeddings), shrunk
    towards the global RMS residual with weight ``uncertainty_prior``; for an ensemble the members' spread
    joins it as ``sqrt(local**2 + uncertainty_spread_weight * spread**2)`` before the scale (weight 0: the
    neighbours' residuals alone). ``probability_temperature``: a classifier's class logits are divided by it
    (each member's, before the members' probabilities are averaged and before a forest blend), so that held-out
    rows' log loss is lowest (temperature scaling: the ranking stays, the probabilities become honest; 1 = as
    trained). ``decision_threshold``: a binary
    classifier's label is 1 when P(class 1) reaches it (chosen on held-out rows; ``None`` = the argmax).
    ``class_decision_weights``: a classifier of three classes or more labels a row with the class of the largest
    ``probability x weight`` (the weights are training class frequencies to the power ``-alpha``, alpha chosen on
    held-out rows for balanced accuracy; ``None`` = the most probable class); the probabilities are unchanged.
    ``uncertainty_interval_multipliers``: two numbers ``(m68, m95)``; ``value ± m * std`` is the 68.27% and the
    95.45% prediction interval (split conformal: quantiles of ``|residual| / std`` over the held-out rows, each
    row's std leave-one-out). They differ from 1 and 2 when errors are not Gaussian (heavy tails); ``None``: no
    intervals.

    Forest blend (set after training by ``crossmat.modeling.forest``, never by hand): a random forest on the
    composition statistics of a frozen per-element property table (``forest_features``, ``forest_features_dim``
    columns) travels in the weights as ``forest_trees`` trees of ``forest_nodes`` nodes in all (``forest_depth``
    levels); the output is ``forest_weight * CrossMat + (1 - forest_weight) * forest`` (regression values before
    clipping; class probabilities for a classifier). ``forest_weight = 1``: no forest.

    Same-composition correction (set after training by ``crossmat.modeling.same_composition``, never by hand): the
    ``same_composition_rows`` distinct compositions of the labelled training rows travel in the weights with their
    mean target (class fractions for a classifier); a formula whose composition is among them is answered with
    ``prediction + same_composition_weight * (stored mean - prediction)`` (after a forest blend, before clipping),
    the weight chosen in [-1, 1] on held-out rows: positive where another entry of the same composition (a
    polymorph, a repeated measurement) is a good guess, negative where it is systematically another case (e.g. the
    other site order of a perovskite). ``0``: no correction.
    """

    model_type = "crossmat"

    def __init__(
        self,
        vocab_size: int = 136,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        fraction_frequencies: int = 16,
        pooling: str = "cls",
        max_position_embeddings: int = 256,
        pad_token_id: int = 0,
        unk_token_id: int = 1,
        cls_token_id: int = 2,
        sep_token_id: int = 3,
        mask_token_id: int = 4,
        digit_token_start: int = 5,
        decimal_token_id: int = 15,
        group_open_token_id: int = 16,
        group_close_token_id: int = 17,
        element_token_start: int = 18,
        num_elements: int = 118,
        structure_embedding_dim: int = 64,
        alignment_loss: str = "cosine",
        alignment_input: str = "masked",
        mlm_loss_weight: float = 1.0,
        alignment_loss_weight: float = 1.0,
        infonce_temperature: float = 0.1,
        regression_loss: str = "l1",
        classifier_dropout: float | None = None,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
        target_names: list[str] | None = None,
        target_units: list[str] | None = None,
        tie_word_embeddings: bool = True,
        element_features: str | None = None,
        element_feature_dim: int = 0,
        fraction_encoding: str = "projected",
        fraction_jitter: float = 0.0,
        ensemble_size: int = 1,
        target_min: list[float | None] | None = None,
        target_max: list[float | None] | None = None,
        uncertainty_rows: int = 0,
        uncertainty_k: int = 20,
        uncertainty_prior: float = 0.0,
        uncertainty_scale: float = 1.0,
        uncertainty_spread_weight: float = 0.0,
        decision_threshold: float | None = None,
        class_decision_weights: list[float] | None = None,
        probability_temperature: float = 1.0,
        uncertainty_interval_multipliers: list[float] | None = None,
        structure_branch: bool = False,
        element_statistics: str | None = None,
        element_statistics_dim: int = 0,
        forest_features: str | None = None,
        forest_features_dim: int = 0,
        forest_nodes: int = 0,
        forest_trees: int = 0,
        forest_depth: int = 0,
        forest_weight: float = 1.0,
        same_composition_rows: int = 0,
        same_composition_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if alignment_loss not in ALIGNMENT_LOSSES:
            raise ValueError(f"alignment_loss must be one of {ALIGNMENT_LOSSES}, got {alignment_loss!r}")
        if alignment_input not in ALIGNMENT_INPUTS:
            raise ValueError(f"alignment_input must be one of {ALIGNMENT_INPUTS}, got {alignment_input!r}")
        if regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {regression_loss!r}")
        if fraction_encoding not in FRACTION_ENCODINGS:
            raise ValueError(f"fraction_encoding must be one of {FRACTION_ENCODINGS}, got {fraction_encoding!r}")
        if fraction_encoding == "sinusoid_table" and hidden_size % 4:
            raise ValueError(f"fraction_encoding 'sinusoid_table' needs hidden_size divisible by 4, got {hidden_size}")
        if element_features and element_feature_dim < 1:
            raise ValueError("element_features needs element_feature_dim >= 1 (the width of the feature table)")
        if element_statistics and element_statistics_dim < 1:
            raise ValueError("element_statistics needs element_statistics_dim >= 1 (the width of the property table)")
        if forest_nodes and not (forest_features and forest_features_dim >= 1 and forest_trees >= 1):
            raise ValueError("a forest (forest_nodes > 0) needs forest_features, forest_features_dim >= 1 and "
                             "forest_trees >= 1")
        if not float(probability_temperature) > 0.0:
            raise ValueError(f"probability_temperature must be > 0, got {probability_temperature}")
        if uncertainty_interval_multipliers is not None and not (
                len(uncertainty_interval_multipliers) == len(INTERVAL_LEVELS)
                and 0.0 < float(uncertainty_interval_multipliers[0]) <= float(uncertainty_interval_multipliers[1])):
            raise ValueError("uncertainty_interval_multipliers must be two numbers 0 < m68 <= m95, got "
                             f"{uncertainty_interval_multipliers!r}")
        if not 0.0 <= float(forest_weight) <= 1.0:
            raise ValueError(f"forest_weight must be in [0, 1], got {forest_weight}")
        if not -1.0 <= float(same_composition_weight) <= 1.0:
            raise ValueError(f"same_composition_weight must be in [-1, 1], got {same_composition_weight}")
        if int(same_composition_rows) < 0:
            raise ValueError(f"same_composition_rows must be >= 0, got {same_composition_rows}")
        if not 0.0 <= fraction_jitter < 1.0:
            raise ValueError(f"fraction_jitter must be in [0, 1), got {fraction_jitter}")
        if int(ensemble_size) < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.fraction_frequencies = fraction_frequencies
        self.pooling = pooling
        self.max_position_embeddings = max_position_embeddings
        self.unk_token_id = unk_token_id
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.mask_token_id = mask_token_id
        self.digit_token_start = digit_token_start
        self.decimal_token_id = decimal_token_id
        self.group_open_token_id = group_open_token_id
        self.group_close_token_id = group_close_token_id
        self.element_token_start = element_token_start
        self.num_elements = num_elements
        self.structure_embedding_dim = structure_embedding_dim
        self.alignment_loss = alignment_loss
        self.alignment_input = alignment_input
        self.mlm_loss_weight = mlm_loss_weight
        self.alignment_loss_weight = alignment_loss_weight
        self.infonce_temperature = infonce_temperature
        self.regression_loss = regression_loss
        self.classifier_dropout = classifier_dropout
        self.target_mean = target_mean
        self.target_std = target_std
        self.target_names = target_names
        self.target_units = target_units
        self.element_features = element_features
        self.element_feature_dim = int(element_feature_dim) if element_features else 0
        self.fraction_encoding = fraction_encoding
        self.fraction_jitter = float(fraction_jitter)
        self.ensemble_size = int(ensemble_size)
        self.target_min = target_min
        self.target_max = target_max
        self.uncertainty_rows = int(uncertainty_rows)
        self.uncertainty_k = int(uncertainty_k)
        self.uncertainty_prior = float(uncertainty_prior)
        self.uncertainty_scale = float(uncertainty_scale)
        self.uncertainty_spread_weight = float(uncertainty_spread_weight)
        self.decision_threshold = None if decision_threshold is None else float(decision_threshold)
        self.class_decision_weights = (None if class_decision_weights is None
                                       else [float(w) for w in class_decision_weights])
        self.probability_temperature = float(probability_temperature)
        self.uncertainty_interval_multipliers = (None if uncertainty_interval_multipliers is None
                                                 else [float(m) for m in uncertainty_interval_multipliers])
        self.structure_branch = bool(structure_branch)
        self.element_statistics = element_statistics or None
        self.element_statistics_dim = int(element_statistics_dim) if element_statistics else 0
        self.forest_features = forest_features or None
        self.forest_features_dim = int(forest_features_dim) if forest_features else 0
        self.forest_nodes = int(forest_nodes)
        self.forest_trees = int(forest_trees)
        self.forest_depth = int(forest_depth)
        self.forest_weight = float(forest_weight)
        self.same_composition_rows = int(same_composition_rows)
        self.same_composition_weight = float(same_composition_weight)
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def problem_type_of(config: Any, float_labels: bool | None = None) -> str:
    """The one rule for what a property head outputs: the stored ``problem_type`` when set, otherwise
    regression for one label (or float training labels), single-label classification for several.

    ``config``: a config object or a ``config.json`` dict; ``float_labels``: whether training labels are
    floating point (``None`` at inference).
    """
    problem = _get(config, "problem_type")
    if problem:
        if problem not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem!r}")
        return str(problem)
    if num_labels_of(config) == 1 or float_labels:
        return "regression"
    return "single_label_classification"


def num_labels_of(config: Any) -> int:
    """Number of outputs (``len(id2label)``; a config object's ``num_labels``)."""
    labels = _get(config, "id2label")
    if labels:
        return len(labels)
    return int(_get(config, "num_labels", 2))


def output_info(config: Any) -> dict[str, Any]:
    """What a property model outputs, read from its config (object or ``config.json`` dict).

    ``problem_type``; ``labels`` (class label per output index, from ``id2label``); ``names`` (regression:
    ``target_names``, falling back to the labels; classification: the labels); ``units`` (one per output,
    ``""`` when unknown).
    """
    n = num_labels_of(config)
    problem = problem_type_of(config)
    raw = {int(k): str(v) for k, v in (_get(config, "id2label") or {}).items()}
    labels = [raw.get(i, f"LABEL_{i}") for i in range(n)]
    names = list(_get(config, "target_names") or []) if problem == "regression" else []
    names = names or list(labels)
    units = list(_get(config, "target_units") or [])
    units = (units + [""] * n)[:n]
    return {"problem_type": problem, "num_labels": n, "labels": labels, "names": names, "units": units}


INTERVAL_TAGS = ("68", "95")  # short names of INTERVAL_LEVELS in output keys and columns (low68_<target>, ...)
INTERVAL_NAMES = tuple(f"interval_{tag}" for tag in INTERVAL_TAGS)  # the pipeline's output keys


def prediction_intervals(config: Any, values: Any, std: Any) -> dict[str, tuple[Any, Any]]:
    """``{"interval_68": (low, high), "interval_95": (low, high)}``: ``values ± m * std`` with the model's
    ``uncertainty_interval_multipliers`` (arrays or tensors of any shape, same as ``values``); ``{}`` when the
    model has no intervals or no std."""
    multipliers = _get(config, "uncertainty_interval_multipliers")
    if not multipliers or std is None:
        return {}
    return {name: (values - m * std, values + m * std) for name, m in zip(INTERVAL_NAMES, multipliers, strict=True)}
