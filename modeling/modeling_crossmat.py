"""CrossMat formula encoder and heads (MLM, imKT structure alignment, property prediction).

A formula is read as a *set* of (element, fraction) pairs, as CrabNet and Roost do: the model decodes
the digit tokens that follow each element (and each closing group) into exact amounts, expands
groups, merges repeated elements, and feeds every distinct element once — its token embedding plus an
encoding of its molar fraction — to a bidirectional transformer. Digits, groups and ``[SEP]`` are
inputs to that decoding only: after decoding, only the element slots (and ``[CLS]``) are gathered into
a compact sequence that runs through the transformer, which is exact (those tokens were never attention
keys and nothing reads their outputs) and about 4x cheaper. There are no position embeddings, so the
output does not depend on the order in which elements are written.

Travels as Hub remote code: imports torch, transformers and ``.configuration_crossmat`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_crossmat import CrossMatConfig, problem_type_of

__all__ = [
    "CROSSMAT_AUTO_MAP",
    "CrossMatForMaskedLM",
    "CrossMatForPropertyPrediction",
    "CrossMatForStructureAlignment",
    "CrossMatPropertyOutput",
    "CrossMatModel",
    "CrossMatPreTrainedModel",
    "TreeEnsemble",
    "decode_composition",
]


# Every Auto class a saved CrossMat folder can be loaded through with ``trust_remote_code=True``
# (transformers alone would only record the class that was saved).
CROSSMAT_AUTO_MAP = {
    "AutoConfig": "configuration_crossmat.CrossMatConfig",
    "AutoModel": "modeling_crossmat.CrossMatModel",
    "AutoModelForMaskedLM": "modeling_crossmat.CrossMatForMaskedLM",
    "AutoModelForPreTraining": "modeling_crossmat.CrossMatForStructureAlignment",
    "AutoModelForSequenceClassification": "modeling_crossmat.CrossMatForPropertyPrediction",
}


def decode_composition(input_ids: torch.Tensor, config: CrossMatConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact element fractions from token ids, fully vectorised.

    Returns ``(slot_mask, fractions)`` of shape ``(batch, length)``: ``slot_mask`` marks the first
    occurrence of every distinct element and every ``[MASK]`` token (an element to be predicted);
    ``fractions`` holds that slot's molar fraction (float32, computed in float64), 0 elsewhere.
    """
    ids = input_ids
    bsz, length = ids.shape
    dev = ids.device
    pos = torch.arange(length, device=dev).expand(bsz, length)
    is_digit = (ids >= config.digit_token_start) & (ids < config.digit_token_start + 10)
    is_dot = ids == config.decimal_token_id
    is_num = is_digit | is_dot
    is_elem = (ids >= config.element_token_start) & (ids < config.element_token_start + config.num_elements)
    is_mask = ids == config.mask_token_id
    is_open = ids == config.group_open_token_id
    is_close = ids == config.group_close_token_id

    # Place value of every digit: integer digits count the digits up to the next non-digit, fraction
    # digits count back to the decimal point before them.
    big = torch.full_like(pos, length)
    next_nondigit = torch.where(~is_digit, pos, big).flip(1).cummin(1).values.flip(1)
    prev_nondigit = torch.where(~is_digit, pos, torch.full_like(pos, -1)).cummax(1).values
    after_dot = is_dot.gather(1, prev_nondigit.clamp(min=0)) & (prev_nondigit >= 0)
    exponent = torch.where(after_dot, prev_nondigit - pos, next_nondigit - pos - 1).double()
    digit = (ids - config.digit_token_start).clamp(0, 9).double()
    contrib = torch.where(is_digit, digit * torch.pow(10.0, exponent), torch.zeros_like(exponent))

    # Each number belongs to the token just before it (an element, [MASK] or a closing group).
    run_start = is_num & ~F.pad(is_num, (1, 0))[:, :-1]
    start_pos = torch.where(run_start, pos, torch.zeros_like(pos)).cummax(1).values
    owner = torch.where(is_num, (start_pos - 1).clamp(min=0), pos)
    amount = torch.zeros(bsz, length, dtype=torch.float64, device=dev).scatter_add_(1, owner, contrib)
    has_num = torch.zeros_like(amount).scatter_add_(1, owner, is_num.double())
    own = torch.where(has_num > 0, amount, torch.ones_like(amount))

    if bool(is_close.any()):
        # Multiply by every enclosing group's multiplier: token i is inside the group closed at j
        # when i < j and the nesting depth never drops below that group's depth between them.
        depth = (is_open.long() - is_close.long()).cumsum(1)
        inner = (depth + is_close.long()).double()  # depth of the group a closing token ends
        rng = torch.where(pos[:, None, :] >= pos[:, :, None], depth[:, None, :].double(), math.inf)
        run_min = F.pad(rng.cummin(2).values, (1, 0), value=math.inf)[:, :, :-1]
        contains = is_close[:, None, :] & (pos[:, None, :] > pos[:, :, None]) & (run_min >= inner[:, None, :])
        mult = torch.where(contains, own[:, None, :], torch.ones_like(run_min)).prod(2)
        own = own * mult

    # Merge repeated elements into their first occurrence.
    elem_index = torch.where(is_elem, ids - config.element_token_start, torch.full_like(ids, config.num_elements))
    totals = torch.zeros(bsz, config.num_elements + 1, dtype=torch.float64, device=dev)
    totals.scatter_add_(1, elem_index, torch.where(is_elem, own, torch.zeros_like(own)))
    first = torch.full((bsz, config.num_elements + 1), length, dtype=torch.long, device=dev)
    first.scatter_reduce_(1, elem_index, pos, reduce="amin")
    is_first = is_elem & (first.gather(1, elem_index) == pos)
    slot_amount = torch.where(is_first, totals.gather(1, elem_index), torch.where(is_mask, own, 0.0))
    slot_mask = is_first | is_mask
    denom = slot_amount.sum(1, keepdim=True).clamp(min=1e-300)
    return slot_mask, (slot_amount / denom).float()


@dataclass
class CrossMatModelOutput(ModelOutput):
    """Encoder output plus the decoded composition (``slot_mask``, ``fractions``)."""

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    slot_mask: torch.BoolTensor | None = None
    fractions: torch.FloatTensor | None = None


@dataclass
class CrossMatPropertyOutput(ModelOutput):
    """Property output: ``logits`` (physical units for regression; for an ensemble the member mean, or the
    log of the mean class probabilities) and ``uncertainty``: a calibrated regression model's standard deviation,
    else the spread (population std) of the members' predictions (values for regression, class probabilities
    for classification), ``None`` for one uncalibrated model; ``pooler_output`` is the (first member's) pooled
    formula embedding; ``member_spread`` is a regression ensemble's spread in physical units, calibrated or not
    (``None`` for one model or classification); ``member_logits`` are a classifier's class logits per member as
    trained, before the temperature (``(members, batch, labels)``; ``None`` for regression)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    uncertainty: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    pooler_output: torch.FloatTensor | None = None
    member_spread: torch.FloatTensor | None = None
    member_logits: torch.FloatTensor | None = None


@dataclass
class CrossMatAlignmentOutput(ModelOutput):
    """imKT output: total loss, its parts, MLM logits and the projected structure-space embedding."""

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    projected_embedding: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


class FractionEncoding(nn.Module):
    """Encodes a molar fraction with sinusoids of the fraction and of its logarithm (CrabNet-style)."""

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__()
        k = config.fraction_frequencies
        self.register_buffer("freqs", (2.0 ** torch.arange(k, dtype=torch.float32)) * math.pi, persistent=False)
        self.proj = nn.Linear(4 * k + 2, config.hidden_size)

    def forward(self, fractions: torch.Tensor) -> torch.Tensor:
        f = fractions.clamp(min=1e-8, max=1.0).unsqueeze(-1)
        logf = torch.log10(f) / 8.0  # in [-1, 0]
        freqs = self.freqs.to(f.dtype)
        feats = torch.cat(
            [f, logf, torch.sin(f * freqs), torch.cos(f * freqs), torch.sin(logf * freqs), torch.cos(logf * freqs)],
            dim=-1,
        )
        return self.proj(feats.to(self.proj.weight.dtype))


class SinusoidTableFractionEncoding(nn.Module):
    """Fixed sinusoid tables (CrabNet-style, continuous): half of the hidden vector encodes the fraction on
    a linear scale, half on a logarithmic scale; each half has a learned log-scale, and the sum is added to
    the element vector without a projection."""

    resolution = 5000.0

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__()
        half = config.hidden_size // 2
        self.register_buffer("inv_freq", 50.0 ** (-torch.arange(0, half, 2, dtype=torch.float32) / half), persistent=False)
        self.log_scales = nn.Parameter(torch.zeros(2))

    def _table(self, x: torch.Tensor) -> torch.Tensor:
        angle = x.unsqueeze(-1) * self.inv_freq.to(x.dtype)
        return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)

    def forward(self, fractions: torch.Tensor) -> torch.Tensor:
        f = fractions.float().clamp(min=1e-8, max=1.0)
        linear = self._table(f * self.resolution)
        logarithmic = self._table((0.0025 * torch.log2(f) ** 2).clamp(max=1.0) * self.resolution)
        scales = self.log_scales.float().exp()
        return torch.cat([linear * scales[0], logarithmic * scales[1]], dim=-1)


class CrossMatEmbeddings(nn.Module):
    """Element vector + fraction encoding on element slots, then LayerNorm and dropout.

    The element vector is the trainable token embedding or, with ``config.element_features``, a trained
    linear projection of a frozen feature table (a persistent buffer, saved with the weights; elements the
    table does not cover keep their token embedding)."""

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.fraction_encoding == "sinusoid_table":
            self.fraction_encoding = SinusoidTableFractionEncoding(config)
        else:
            self.fraction_encoding = FractionEncoding(config)
        self.element_projection = None
        if config.element_features:
            dim = config.element_feature_dim
            self.register_buffer("element_feature_table", torch.zeros(config.vocab_size, dim))
            self.register_buffer("element_feature_mask", torch.zeros(config.vocab_size, dtype=torch.bool))
            self.element_projection = nn.Linear(dim, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def set_element_features(self, table: torch.Tensor, covered: torch.Tensor) -> None:
        """Install the frozen feature table (``vocab_size x element_feature_dim``) and its coverage mask."""
        if self.element_projection is None:
            raise ValueError("this model has no element feature table (config.element_features is not set)")
        if tuple(table.shape) != tuple(self.element_feature_table.shape):
            raise ValueError(f"feature table has shape {tuple(table.shape)}, expected {tuple(self.element_feature_table.shape)}")
        with torch.no_grad():
            self.element_feature_table.copy_(table)
            self.element_feature_mask.copy_(covered.bool())

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Per-token vectors before the fraction encoding (what ``inputs_embeds`` replaces)."""
        emb = self.word_embeddings(input_ids)
        if self.element_projection is None:
            return emb
        feats = self.element_projection(self.element_feature_table[input_ids].to(self.element_projection.weight.dtype))
        return torch.where(self.element_feature_mask[input_ids].unsqueeze(-1), feats.to(emb.dtype), emb)

    def forward(
        self, input_ids: torch.Tensor, slot_mask: torch.Tensor, fractions: torch.Tensor, inputs_embeds=None
    ) -> torch.Tensor:
        emb = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        frac = self.fraction_encoding(fractions).to(emb.dtype) * slot_mask.unsqueeze(-1).to(emb.dtype)
        return self.dropout(self.layer_norm(emb + frac))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention (used when ``attn_implementation="eager"`` or attentions are requested)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.dropout(F.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class CrossMatAttention(nn.Module):
    """Multi-head self-attention through transformers' attention interface (sdpa by default)."""

    def __init__(self, config: CrossMatConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs):
        bsz, length, _ = hidden_states.shape
        q, k, v = self.qkv(hidden_states).view(bsz, length, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.out_proj(out.reshape(bsz, length, -1)), weights


class CrossMatLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, config: CrossMatConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = CrossMatAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attn, weights = self.attention(self.attn_norm(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.dropout(attn)
        mlp = self.fc2(self.dropout(self.act(self.fc1(self.mlp_norm(hidden_states)))))
        return hidden_states + self.dropout(mlp), weights


class CrossMatPreTrainedModel(PreTrainedModel):
    """Weight init and attention-backend flags shared by all CrossMat models."""

    config_class = CrossMatConfig
    config: CrossMatConfig
    base_model_prefix = "crossmat"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CrossMatLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual; when registered for remote code, map every CrossMat Auto class in ``auto_map``."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **CROSSMAT_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, CrossMatLMHead):
            nn.init.zeros_(module.bias)
        elif isinstance(module, FractionEncoding):
            module.freqs.copy_((2.0 ** torch.arange(module.freqs.numel(), dtype=torch.float32)) * math.pi)
        elif isinstance(module, SinusoidTableFractionEncoding):
            half = self.config.hidden_size // 2
            module.inv_freq.copy_(50.0 ** (-torch.arange(0, half, 2, dtype=torch.float32) / half))
            nn.init.zeros_(module.log_scales)


class CrossMatModel(CrossMatPreTrainedModel):
    """The CrossMat encoder: composition decoding, embeddings, transformer layers, pooling."""

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__(config)
        self.embeddings = CrossMatEmbeddings(config)
        self.layers = nn.ModuleList(CrossMatLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _check_inputs(self, input_ids: torch.Tensor, slot_mask: torch.Tensor, fractions: torch.Tensor) -> None:
        """Refuse rows the model cannot read: unknown tokens, zero amounts, no element at all."""
        bad = (input_ids == self.config.unk_token_id).any(1)
        bad |= (slot_mask & (fractions <= 0)).any(1) | ~slot_mask.any(1)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"rows {rows[:20]} contain an unknown token ([UNK]: unknown element or character), a zero "
                "amount, or no element; validate formulas with tokenization.parse_formula / the CrossMat tokenizer"
            )

    def _jitter(self, fractions: torch.Tensor, slot_mask: torch.Tensor) -> torch.Tensor:
        """Training-time augmentation: multiply each slot's fraction by ``1 + jitter * N(0, 1)``, renormalise."""
        noise = 1.0 + self.config.fraction_jitter * torch.randn_like(fractions)
        jittered = torch.where(slot_mask, fractions * noise.clamp(min=0.5), torch.zeros_like(fractions))
        return jittered / jittered.sum(1, keepdim=True).clamp(min=1e-12)

    def pool(self, hidden: torch.Tensor, slot_mask: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
        """Pooled formula embedding (``config.pooling``: CLS token, slot mean or fraction-weighted mean)."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        weights = slot_mask.to(hidden.dtype)
        if self.config.pooling == "fraction_weighted":
            weights = weights * fractions.to(hidden.dtype)
        return (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-12)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CrossMatModelOutput | tuple:
        """``input_ids`` are always required (amounts are read from them); ``inputs_embeds`` may
        replace the token vectors (``embeddings.embed_tokens``; used by attribution methods).

        ``last_hidden_state`` and ``hidden_states`` are returned at token positions (zeros at digit, group
        and padding tokens, which do not run through the transformer); ``attentions`` are over the compact
        slot sequence ([CLS] first, then the element slots in order)."""
        if input_ids is None:
            raise ValueError("CrossMatModel needs input_ids: element amounts are decoded from the digit tokens")
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        output_attentions = output_attentions or self.config.output_attentions
        slot_mask, fractions = decode_composition(input_ids, self.config)
        if attention_mask is not None:
            slot_mask = slot_mask & attention_mask.bool()
        self._check_inputs(input_ids, slot_mask, fractions)
        if self.training and self.config.fraction_jitter > 0:
            fractions = self._jitter(fractions, slot_mask)
        # Compact sequence: the element slots and [CLS] (the only attention keys), in their original order.
        keep = slot_mask | (input_ids == self.config.cls_token_id)
        keep[:, 0] = True  # never leave a query with nothing to attend to
        width = int(keep.sum(1).max())
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]
        kept = keep.gather(1, order)
        c_slot = slot_mask.gather(1, order) & kept
        c_frac = fractions.gather(1, order) * c_slot
        c_embeds = None
        if inputs_embeds is not None:
            c_embeds = inputs_embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, inputs_embeds.shape[-1]))
        hidden = self.embeddings(input_ids.gather(1, order), c_slot, c_frac, c_embeds)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=kept.long())
        all_hidden: list[torch.Tensor] = [hidden] if output_hidden_states else []
        all_attn: list[torch.Tensor] = []
        for layer in self.layers:
            hidden, weights = layer(hidden, mask, **kwargs)
            if output_hidden_states:
                all_hidden.append(hidden)
            if output_attentions:
                all_attn.append(weights)
        hidden = self.final_norm(hidden)
        pooled = self.pool(hidden, c_slot, c_frac)

        def expand(h: torch.Tensor) -> torch.Tensor:  # back to token positions; zeros where no slot
            full = h.new_zeros(h.shape[0], input_ids.shape[1], h.shape[-1])
            return full.scatter(1, order.unsqueeze(-1).expand(-1, -1, h.shape[-1]), h * kept.unsqueeze(-1).to(h.dtype))

        out = CrossMatModelOutput(
            last_hidden_state=expand(hidden),
            pooler_output=pooled,
            hidden_states=tuple(expand(h) for h in all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            slot_mask=slot_mask,
            fractions=fractions,
        )
        return out if return_dict is not False else out.to_tuple()


class CrossMatLMHead(nn.Module):
    """Dense -> GELU -> LayerNorm -> vocabulary logits (decoder tied to the token embeddings)."""

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden)))) + self.bias


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    if labels is None:
        return None
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.to(logits.device).view(-1), ignore_index=-100)


class CrossMatForMaskedLM(CrossMatPreTrainedModel):
    """Masked-element modelling: predict the element behind each ``[MASK]`` from the rest of the formula
    and the masked element's own fraction. ``labels`` use -100 for positions that are not scored."""

    _tied_weights_keys = {"lm_head.decoder.weight": "crossmat.embeddings.word_embeddings.weight"}

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__(config)
        self.crossmat = CrossMatModel(config)
        self.lm_head = CrossMatLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head.decoder = new_embeddings

    def forward(self, input_ids, attention_mask=None, labels=None, inputs_embeds=None, **kwargs) -> MaskedLMOutput:
        out = self.crossmat(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.lm_head(out.last_hidden_state)
        return MaskedLMOutput(
            loss=_mlm_loss(logits, labels), logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )


def alignment_loss(projected: torch.Tensor, target: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Loss pulling formula embeddings onto structure embeddings: ``cosine``, ``mse`` or ``infonce``."""
    target = target.to(projected.dtype)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(projected, target, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(projected, target)
    if kind == "infonce":
        logits = F.normalize(projected, dim=-1) @ F.normalize(target, dim=-1).T / temperature
        labels = torch.arange(logits.size(0), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    raise ValueError(f"unknown alignment loss {kind!r}")


class CrossMatForStructureAlignment(CrossMatPreTrainedModel):
    """imKT pretraining: MLM loss plus a projection of the pooled formula embedding onto the embedding a
    structure model gives the compound's crystal (``structure_embeddings``, size
    ``config.structure_embedding_dim``). Total loss = ``mlm_loss_weight * mlm + alignment_loss_weight *
    alignment``; either part is skipped when its target (``labels`` / ``structure_embeddings``) is absent.
    ``structure_mask`` (bool, one per row) marks the rows that have a structure; the alignment loss is taken
    over those rows only (the others train MLM only). With ``config.alignment_input == "clean"`` the projection reads
    the pooled embedding of a second pass over ``clean_input_ids`` (the unmasked formula) when they are given."""

    _tied_weights_keys = {"lm_head.decoder.weight": "crossmat.embeddings.word_embeddings.weight"}

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__(config)
        self.crossmat = CrossMatModel(config)
        self.lm_head = CrossMatLMHead(config)
        self.projection = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.structure_embedding_dim),
        )
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head.decoder = new_embeddings

    def forward(
        self, input_ids, attention_mask=None, labels=None, structure_embeddings=None, inputs_embeds=None,
        structure_mask=None, clean_input_ids=None, **kwargs
    ) -> CrossMatAlignmentOutput:
        out = self.crossmat(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.lm_head(out.last_hidden_state)
        pooled = out.pooler_output
        if clean_input_ids is not None and self.config.alignment_input == "clean" and structure_embeddings is not None:
            pooled = self.crossmat(clean_input_ids, attention_mask=attention_mask, **kwargs).pooler_output
        projected = self.projection(pooled)
        mlm = _mlm_loss(logits, labels)
        align = None
        if structure_embeddings is not None:
            if structure_embeddings.shape[-1] != self.config.structure_embedding_dim:
                raise ValueError(
                    f"structure_embeddings have size {structure_embeddings.shape[-1]}, "
                    f"config.structure_embedding_dim is {self.config.structure_embedding_dim}"
                )
            rows = projected, structure_embeddings
            if structure_mask is not None:  # rows without a structure train MLM only
                rows = projected[structure_mask.bool()], structure_embeddings[structure_mask.bool()]
            enough = len(rows[0]) > (1 if self.config.alignment_loss == "infonce" else 0)
            align = (alignment_loss(*rows, self.config.alignment_loss, self.config.infonce_temperature) if enough
                     else projected.sum() * 0.0)  # keeps the projection in the graph (distributed training)
        parts = []
        if mlm is not None:
            parts.append(self.config.mlm_loss_weight * mlm)
        if align is not None:
            parts.append(self.config.alignment_loss_weight * align)
        return CrossMatAlignmentOutput(
            loss=sum(parts) if parts else None,
            mlm_loss=mlm,
            alignment_loss=align,
            logits=logits,
            projected_embedding=projected,
            pooler_output=out.pooler_output,
        )


class TreeEnsemble(nn.Module):
    """A fitted random forest held as tensors (saved with the weights, never pickled) and evaluated in torch.

    Every tree's nodes are concatenated: ``feature`` (-1 on leaves), ``threshold`` (float64, as scikit-learn
    compares), ``left`` / ``right`` (global node indices; a leaf points at itself), ``value`` (per-node outputs:
    regression means or class fractions) and ``roots`` (each tree's first node); indices are int32 to halve the
    size. ``depth`` steps of a batched descent reach every leaf; the output is the mean over trees, as
    ``predict`` / ``predict_proba``."""

    def __init__(self, n_nodes: int, n_trees: int, n_outputs: int, depth: int) -> None:
        super().__init__()
        self.depth = int(depth)
        self.register_buffer("feature", torch.full((n_nodes,), -1, dtype=torch.int32))
        self.register_buffer("threshold", torch.zeros(n_nodes, dtype=torch.float64))
        self.register_buffer("left", torch.arange(n_nodes, dtype=torch.int32))
        self.register_buffer("right", torch.arange(n_nodes, dtype=torch.int32))
        self.register_buffer("value", torch.zeros(n_nodes, n_outputs))
        self.register_buffer("roots", torch.zeros(n_trees, dtype=torch.int32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, n_outputs)`` forest output for ``(batch, n_features)`` inputs (compared in float32 precision,
        like scikit-learn's trees)."""
        x = features.detach().float().double()
        batch, trees = x.shape[0], self.roots.shape[0]
        node = self.roots.long().repeat(batch)  # (row, tree) pairs, row-major
        row = torch.arange(batch, device=x.device).repeat_interleave(trees)
        active = torch.arange(batch * trees, device=x.device)
        for _ in range(self.depth):  # only the pairs not yet at a leaf move on: work ~ the paths' total length
            here = node[active]
            feature = self.feature[here].long()
            inner = feature >= 0
            active, here, feature = active[inner], here[inner], feature[inner]
            if active.numel() == 0:
                break
            goes_left = x[row[active], feature] <= self.threshold[here]
            node[active] = torch.where(goes_left, self.left[here], self.right[here]).long()
        return self.value[node].view(batch, trees, -1).mean(1).to(features.dtype)


def composition_statistics(table: torch.Tensor, input_ids: torch.Tensor, slot_mask: torch.Tensor,
                           fractions: torch.Tensor) -> torch.Tensor:
    """``(batch, 4 * d)``: the fraction-weighted mean and standard deviation, the minimum and the maximum of the
    ``d`` columns of a per-token property ``table`` over each formula's element slots."""
    x = table[input_ids].float()  # (batch, length, d)
    mask = slot_mask.unsqueeze(-1)
    w = (fractions.float() * slot_mask).unsqueeze(-1)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    mean = (w * x).sum(1)
    std = (w * (x - mean.unsqueeze(1)) ** 2).sum(1).clamp_min(0.0).sqrt()
    low = torch.where(mask, x, torch.full_like(x, 1e4)).amin(1)
    high = torch.where(mask, x, torch.full_like(x, -1e4)).amax(1)
    return torch.cat([mean, std, low, high], -1)


def formula_statistics(table: torch.Tensor, input_ids: torch.Tensor, config: CrossMatConfig) -> torch.Tensor:
    """:func:`composition_statistics` of ``table`` over each formula's exact fractions, decoded from ``input_ids``
    (what a blended forest reads)."""
    slot_mask, fractions = decode_composition(input_ids, config)
    return composition_statistics(table.to(input_ids.device), input_ids, slot_mask, fractions)


COMPOSITION_KEY_BITS = 20  # fractions are compared to 2**-20 (about 1e-6)


def composition_keys(input_ids: torch.Tensor, multipliers: torch.Tensor, config: CrossMatConfig) -> torch.Tensor:
    """``(batch,)`` int64 key of each formula's composition: the sum over its elements of the molar fraction (rounded
    to ``2**-COMPOSITION_KEY_BITS``) times the element's multiplier (random, below ``2**38``, so the sum stays below
    ``2**59`` and two different compositions share a key with probability about ``2**-38``). ``Fe2O3``, ``Fe4O6`` and
    ``O3Fe2`` get one key."""
    slot_mask, fractions = decode_composition(input_ids, config)
    is_elem = (input_ids >= config.element_token_start) & (input_ids < config.element_token_start + config.num_elements)
    index = (input_ids - config.element_token_start).clamp(0, config.num_elements - 1)
    quantised = torch.round(fractions.double() * 2**COMPOSITION_KEY_BITS).long()
    terms = torch.where(slot_mask & is_elem, quantised * multipliers.to(input_ids.device)[index], torch.zeros_like(index))
    return terms.sum(1)


def _property_head(config: CrossMatConfig) -> nn.Sequential:
    drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    width = config.hidden_size * (2 if getattr(config, "structure_branch", False) else 1)
    width += 4 * getattr(config, "element_statistics_dim", 0)
    return nn.Sequential(
        nn.Linear(width, config.hidden_size),
        nn.GELU(),
        nn.Dropout(drop),
        nn.Linear(config.hidden_size, config.num_labels),
    )


class CrossMatEnsembleMember(nn.Module):
    """One extra member of a property-model ensemble: its own encoder and head."""

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__()
        self.crossmat = CrossMatModel(config)
        self.head = _property_head(config)


class CrossMatForPropertyPrediction(CrossMatPreTrainedModel):
    """Property head on the pooled embedding, following transformers' ``problem_type`` conventions.

    * ``regression`` (``num_labels`` targets): the head predicts standardised targets; ``logits`` are
      returned in physical units using ``config.target_mean``/``target_std`` (clipped to
      ``config.target_min``/``target_max`` when set); the loss (``config.regression_loss``) is computed on
      standardised, unclipped values so targets of any scale train alike.
    * ``single_label_classification``: ``num_labels`` class logits (2 for binary), cross-entropy.
    * ``multi_label_classification``: one logit per label, binary cross-entropy.

    With ``config.ensemble_size = N > 1`` the model holds N independently initialised encoder+head members
    (``crossmat``/``head`` and ``ensemble_members``); each member's loss is its own (the total is their sum,
    so each trains as if alone), the output is the member mean (regression) or the mean class probability
    (classification), and ``uncertainty`` is the members' spread.

    With ``config.structure_branch`` a frozen copy of the pretrained encoder (``structure_branch``, no gradient,
    always in eval mode, shared by the members) embeds the same formula, and every head reads the concatenation
    of its member's pooled embedding and the frozen one.
    """

    def __init__(self, config: CrossMatConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.crossmat = CrossMatModel(config)
        self.head = _property_head(config)
        self.ensemble_members = nn.ModuleList(CrossMatEnsembleMember(config) for _ in range(config.ensemble_size - 1))
        self.structure_branch = CrossMatModel(config) if getattr(config, "structure_branch", False) else None
        if getattr(config, "element_statistics_dim", 0):  # the frozen property table of the head's statistics
            self.register_buffer("element_statistics_table", torch.zeros(config.vocab_size, config.element_statistics_dim))
        self.forest: TreeEnsemble | None = None
        if getattr(config, "forest_nodes", 0):  # a blended forest (crossmat.modeling.forest), stored in the weights
            self.register_buffer("forest_feature_table", torch.zeros(config.vocab_size, config.forest_features_dim))
            self.forest = TreeEnsemble(config.forest_nodes, config.forest_trees, config.num_labels, config.forest_depth)
        self._uncertainty_buffers(config.uncertainty_rows)
        self._same_composition_buffers(getattr(config, "same_composition_rows", 0))
        self.post_init()
        if self.structure_branch is not None:
            self.structure_branch.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> CrossMatForPropertyPrediction:
        """As ``nn.Module.train``; the frozen structure branch stays in eval mode (no dropout, no jitter) and without
        gradient (also after ``from_pretrained``, which ends with ``eval()``)."""
        super().train(mode)
        if self.structure_branch is not None:
            self.structure_branch.requires_grad_(False).eval()
        return self

    def _uncertainty_buffers(self, rows: int) -> None:
        """Calibration rows of the uncertainty (unit-norm pooled embeddings, residuals in physical units); saved
        with the weights, empty until ``install_uncertainty``."""
        self.register_buffer("uncertainty_keys", torch.zeros(rows, self.config.hidden_size), persistent=rows > 0)
        self.register_buffer("uncertainty_residuals", torch.zeros(rows, self.num_labels), persistent=rows > 0)

    def install_uncertainty(self, keys: torch.Tensor, residuals: torch.Tensor, k: int, prior: float,
                            scale: float, spread_weight: float = 0.0) -> None:
        """Store calibration rows (pooled embeddings ``keys``, out-of-sample ``residuals``) and the fitted
        ``k``/``prior``/``scale``/``spread_weight`` (see :class:`CrossMatConfig`); later outputs carry a
        standard deviation."""
        if keys.shape[0] != residuals.shape[0] or keys.shape[0] < 2:
            raise ValueError(f"need >= 2 calibration rows with one residual each, got {tuple(keys.shape)} / "
                             f"{tuple(residuals.shape)}")
        ref = next(self.parameters())
        self._uncertainty_buffers(keys.shape[0])
        self.uncertainty_keys = F.normalize(keys.detach().float(), dim=-1).to(ref.device)
        self.uncertainty_residuals = residuals.detach().float().reshape(keys.shape[0], -1).to(ref.device)
        self.config.uncertainty_rows = int(keys.shape[0])
        self.config.uncertainty_k, self.config.uncertainty_prior = int(k), float(prior)
        self.config.uncertainty_scale = float(scale)
        self.config.uncertainty_spread_weight = float(spread_weight)

    def local_residual_scale(self, pooled: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
        """Shrunken RMS residual of each row's nearest calibration rows, ``(batch, labels)`` (before the scale);
        ``exclude_self`` when ``pooled`` are the calibration rows themselves (leave-one-out)."""
        keys, res2 = self.uncertainty_keys, self.uncertainty_residuals.double() ** 2
        k = min(self.config.uncertainty_k, keys.shape[0] - int(exclude_self))
        sims = F.normalize(pooled.float(), dim=-1) @ keys.T
        if exclude_self:
            sims.fill_diagonal_(-float("inf"))
        idx = sims.topk(k, dim=-1).indices
        local = res2[idx].sum(1)  # (batch, labels)
        prior = self.config.uncertainty_prior
        return ((local + prior * res2.mean(0)) / (k + prior)).sqrt()

    def _same_composition_buffers(self, rows: int) -> None:
        """The same-composition correction's stored compositions (sorted keys, mean targets in physical units or
        class fractions) and the per-element key multipliers; saved with the weights, empty until
        ``install_same_composition``."""
        keep = rows > 0
        self.register_buffer("same_composition_keys", torch.zeros(rows, dtype=torch.long), persistent=keep)
        self.register_buffer("same_composition_targets", torch.zeros(rows, self.num_labels), persistent=keep)
        self.register_buffer("composition_key_multipliers", torch.zeros(self.config.num_elements, dtype=torch.long),
                             persistent=keep)

    def install_same_composition(self, keys: torch.Tensor, targets: torch.Tensor, multipliers: torch.Tensor,
                                 weight: float) -> None:
        """Store the training rows' distinct compositions (``keys`` from :func:`composition_keys` with
        ``multipliers``, their mean ``targets``) and the correction's ``weight`` (see :class:`CrossMatConfig`)."""
        order = torch.argsort(keys)
        keys, targets = keys[order], targets.reshape(len(keys), -1)[order]
        if len(keys) > 1 and bool((keys[1:] == keys[:-1]).any()):
            raise ValueError("install_same_composition: every composition key must appear once (average first)")
        ref = next(self.parameters())
        self._same_composition_buffers(len(keys))
        self.same_composition_keys = keys.long().to(ref.device)
        self.same_composition_targets = targets.detach().float().to(ref.device)
        self.composition_key_multipliers = multipliers.long().to(ref.device)
        self.config.same_composition_rows, self.config.same_composition_weight = len(keys), float(weight)

    def same_composition_target(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(batch, labels)``: the stored mean target of each formula's composition, NaN where it is not stored."""
        if not self.config.same_composition_rows:
            raise ValueError("no compositions are stored (install_same_composition)")
        keys = composition_keys(input_ids, self.composition_key_multipliers, self.config)
        stored = self.same_composition_keys
        at = torch.searchsorted(stored, keys).clamp(max=len(stored) - 1)
        values = self.same_composition_targets[at]
        return torch.where((stored[at] == keys)[:, None], values, torch.full_like(values, float("nan")))

    def _same_composition(self, input_ids: torch.Tensor | None, given: torch.Tensor | None) -> torch.Tensor | None:
        """The correction's stored targets for the batch: ``given`` (e.g. the training rows' means for calibration rows) or
        the installed ones; ``None`` when nothing is corrected."""
        if float(getattr(self.config, "same_composition_weight", 0.0)) == 0.0:
            return None
        if given is not None:
            return given
        if not self.config.same_composition_rows:
            return None
        if input_ids is None:
            raise ValueError("a model with a same-composition correction needs input_ids (it reads the formula)")
        return self.same_composition_target(input_ids)

    def install_forest(self, forest: TreeEnsemble, table: torch.Tensor, source: str, weight: float) -> None:
        """Blend ``forest`` (fitted on :meth:`forest_features` computed with the per-element ``table`` of
        ``source``) into every later output with CrossMat's share ``weight`` (see :class:`CrossMatConfig`)."""
        if self.config.problem_type == "multi_label_classification":
            raise ValueError("a forest blend supports regression and single-label classification")
        if forest.value.shape[1] != self.num_labels:
            raise ValueError(f"the forest has {forest.value.shape[1]} outputs, the model {self.num_labels}")
        ref = next(self.parameters())
        self.register_buffer("forest_feature_table", table.detach().float().to(ref.device))
        self.forest = forest.to(ref.device)
        self.config.forest_features, self.config.forest_features_dim = source, int(table.shape[1])
        self.config.forest_nodes, self.config.forest_trees = int(forest.value.shape[0]), int(forest.roots.shape[0])
        self.config.forest_depth, self.config.forest_weight = forest.depth, float(weight)

    def forest_features(self, input_ids: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, 4 * d)`` composition statistics that the forest reads: :func:`composition_statistics` of the
        per-element ``table`` (default: the installed ``forest_feature_table``) over the formula's exact fractions."""
        return formula_statistics(self.forest_feature_table if table is None else table, input_ids, self.config)

    def _forest_output(self, input_ids: torch.Tensor | None, given: torch.Tensor | None) -> torch.Tensor | None:
        """The forest's outputs for the batch: ``given`` (e.g. out-of-bag predictions of calibration rows) or the
        installed forest's; ``None`` when nothing is blended."""
        if self.config.forest_weight >= 1.0 or (given is None and self.forest is None):
            return None
        if given is not None:
            return given
        if input_ids is None:
            raise ValueError("a model with a blended forest needs input_ids (the forest reads the formula's elements)")
        return self.forest(self.forest_features(input_ids))

    def members(self) -> list[tuple[CrossMatModel, nn.Module]]:
        """(encoder, head) of every ensemble member, the first one being ``crossmat``/``head``."""
        return [(self.crossmat, self.head)] + [(m.crossmat, m.head) for m in self.ensemble_members]

    def _target_stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_labels
        mean = self.config.target_mean or [0.0] * n
        std = self.config.target_std or [1.0] * n
        if len(mean) != n or len(std) != n:
            raise ValueError(f"target_mean/target_std need {n} values, got {len(mean)}/{len(std)}")
        return ref.new_tensor(mean), ref.new_tensor(std)

    def _clip(self, values: torch.Tensor) -> torch.Tensor:
        """Clip physical-unit outputs to ``config.target_min``/``target_max`` (``None`` entries are open)."""
        lo, hi = self.config.target_min, self.config.target_max
        if not lo and not hi:
            return values
        n = self.num_labels
        inf = float("inf")
        low = values.new_tensor([(-inf if v is None else float(v)) for v in (lo or [None] * n)])
        high = values.new_tensor([(inf if v is None else float(v)) for v in (hi or [None] * n)])
        return torch.maximum(torch.minimum(values, high), low)

    def _problem_type(self, labels: torch.Tensor | None) -> str:
        if self.config.problem_type is None:  # the shared rule (configuration_crossmat.problem_type_of)
            floating = None if labels is None else bool(labels.is_floating_point())
            self.config.problem_type = problem_type_of(self.config, floating)
        return self.config.problem_type

    def forward(self, input_ids, attention_mask=None, labels=None, inputs_embeds=None, forest_output=None,
                same_composition_target=None, **kwargs) -> CrossMatPropertyOutput:
        """``forest_output``: the blended forest's outputs for these rows, instead of the installed forest's
        (out-of-bag predictions when the rows trained the forest: calibration and validation);
        ``same_composition_target``: the same-composition correction's targets for these rows (NaN: none), instead
        of the stored ones (for held-out rows that are among the stored: their training rows' means)."""
        members = self.members()
        if isinstance(inputs_embeds, (list, tuple)):
            if len(inputs_embeds) != len(members):
                raise ValueError(f"inputs_embeds: got {len(inputs_embeds)} tensors for {len(members)} ensemble members")
            per_member = list(inputs_embeds)
        elif inputs_embeds is not None and len(members) > 1:
            raise ValueError("inputs_embeds cannot be shared by ensemble members (each has its own embeddings); "
                             "pass a list with one tensor per member, in model.members() order")
        else:
            per_member = [inputs_embeds] * len(members)
        frozen = None
        if self.structure_branch is not None:
            if input_ids is None:
                raise ValueError("a model with a structure branch needs input_ids (the frozen branch reads the formula "
                                 "itself; inputs_embeds alone cannot drive it)")
            with torch.no_grad():
                frozen = self.structure_branch(input_ids, attention_mask=attention_mask).pooler_output
        first = stats = None
        raws = []
        for (encoder, head), member_embeds in zip(members, per_member, strict=True):
            out = encoder(input_ids, attention_mask=attention_mask, inputs_embeds=member_embeds, **kwargs)
            if first is None:
                first = out
                if getattr(self.config, "element_statistics_dim", 0):
                    if input_ids is None:
                        raise ValueError("a model with element_statistics needs input_ids (the statistics read the "
                                         "formula's elements)")
                    stats = composition_statistics(self.element_statistics_table, input_ids, out.slot_mask,
                                                   out.fractions)
            parts = [out.pooler_output] + ([] if frozen is None else [frozen]) + ([] if stats is None else [stats])
            pooled = parts[0] if len(parts) == 1 else torch.cat([t.to(out.pooler_output) for t in parts], -1)
            raws.append(head(pooled))
        raw = torch.stack(raws)  # (members, batch, labels)
        problem = self._problem_type(labels)
        forest = self._forest_output(input_ids, forest_output)
        w = self.config.forest_weight
        same = self._same_composition(input_ids, same_composition_target)
        beta = float(getattr(self.config, "same_composition_weight", 0.0))
        losses = []
        uncertainty = spread = None
        if problem == "regression":
            mean, std = self._target_stats(raw)
            values = raw * std + mean
            blended = values.mean(0) if forest is None else w * values.mean(0) + (1 - w) * forest.to(values)
            if same is not None:
                same = same.to(blended)
                blended = torch.where(same.isnan(), blended, blended + beta * (same - blended))
            logits = self._clip(blended)
            spread = values.std(0, unbiased=False) if len(raws) > 1 else None
            if self.config.uncertainty_rows > 0:  # calibrated on held-out rows (CrossMatConfig)
                scale = self.local_residual_scale(first.pooler_output)
                if spread is not None and self.config.uncertainty_spread_weight > 0:
                    scale = (scale**2 + self.config.uncertainty_spread_weight * spread.double() ** 2).sqrt()
                uncertainty = (self.config.uncertainty_scale * scale).to(values.dtype)
            else:
                uncertainty = spread
            if labels is not None:
                target = (labels.to(raw.dtype).view(raw.shape[1:]) - mean) / std
                fn = {"l1": F.l1_loss, "mse": F.mse_loss, "huber": F.smooth_l1_loss}[self.config.regression_loss]
                losses = [fn(r, target) for r in raws]
        else:
            single = problem == "single_label_classification"
            if labels is not None and single:
                losses = [F.cross_entropy(r.view(-1, self.num_labels), labels.view(-1).long()) for r in raws]
            elif labels is not None:
                losses = [F.binary_cross_entropy_with_logits(r, labels.to(r.dtype)) for r in raws]
            temperature = float(getattr(self.config, "probability_temperature", 1.0))
            scaled = raw if temperature == 1.0 else raw / temperature
            if len(raws) == 1 and forest is None and same is None:
                logits = scaled[0]
            else:
                probs = torch.softmax(scaled.float(), -1) if single else torch.sigmoid(scaled.float())
                p = probs.mean(0)
                if forest is not None:  # class probabilities (install_forest: single-label only)
                    p = w * p + (1 - w) * forest.float()
                if same is not None:  # class fractions (install_same_composition: single-label only)
                    same = same.float()
                    moved = (p + beta * (same - p)).clamp(1e-7, 1.0)
                    p = torch.where(same.isnan(), p, moved / moved.sum(-1, keepdim=True))
                p = p.clamp(1e-7, 1 - 1e-7)
                logits = (p.log() if single else torch.logit(p)).to(raw.dtype)
                if len(raws) > 1:
                    uncertainty = probs.std(0, unbiased=False).to(raw.dtype)
        return CrossMatPropertyOutput(
            loss=sum(losses) if losses else None,
            logits=logits,
            uncertainty=uncertainty,
            hidden_states=first.hidden_states,
            attentions=first.attentions,
            pooler_output=first.pooler_output,
            member_spread=spread,
            member_logits=None if problem == "regression" else raw,
        )
