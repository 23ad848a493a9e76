"""Models and tokenizers for both profiles.

- reference: a pretrained seq2seq checkpoint (`google/flan-t5-base` or any hub id / local folder)
  through `from_pretrained`, adapted with LoRA (peft); targets are the dataset's SQL.
- embedded: a T5 built from a `T5Config` and trained from scratch on CPU, with a tokenizer
  trained on the training split. Its targets are the compact form (medsql.sqlform), in which every
  `table.column`, aggregate and operator is a single token: about 14 tokens a query instead of ~50.
  A pointer-generator copy head (`T5WithCopy`, `train.embedded.copy_mechanism`) lets it copy
  condition values from the question instead of spelling them out of its vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch import nn
from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModelForSeq2SeqLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from medsql.config import EmbeddedModel, Lora
from medsql.sqlform import AGGREGATES, COLUMN_TOKENS

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
# Schema tokens hold '.' or '_', so matching them as whole words never splits a question's word.
SCHEMA_TOKENS = COLUMN_TOKENS + [a for a in AGGREGATES if "_" in a]


def train_tokenizer(texts: Iterable[str], vocab_size: int, individual_digits: bool = True) -> PreTrainedTokenizerFast:
    """A BPE tokenizer over lower-cased text, spaces kept as '▁' so decoding is lossless.

    Digits are single tokens: copying a number (an age, a year, a subject id) from the question
    is then one skill over ten tokens, not one per number the training split happens to hold.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.pre_tokenizer = (pre_tokenizers.Sequence([metaspace, pre_tokenizers.Digits(individual_digits=True)])
                               if individual_digits else metaspace)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz0123456789"),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # T5 convention: every sequence ends with </s>, so the model learns where an answer stops.
    eos = SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))])
    tokenizer.add_tokens([AddedToken(t, single_word=True, normalized=True) for t in SCHEMA_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=256, **SPECIAL_TOKENS)


def target_ids(tokenizer: PreTrainedTokenizerFast, texts: list[str], compact: bool, max_length: int) -> list[list[int]]:
    """The label ids of target texts (compact form or SQL), as training learns them and scoring reads them.

    In the compact form a lone '▁' right before a schema token (`where ▁ diagnoses.short_title`)
    carries nothing and is dropped; elsewhere it is a real space (before a number, inside a date).
    """
    ids = tokenizer(text_target=texts, truncation=True, max_length=max_length)["input_ids"]
    if not compact:
        return ids
    schema_ids = set(tokenizer.convert_tokens_to_ids(SCHEMA_TOKENS))
    space_id = tokenizer.convert_tokens_to_ids("▁")
    return [[i for i, nxt in zip(row, row[1:] + [None], strict=True) if not (i == space_id and nxt in schema_ids)]
            for row in ids]


def decode_compact(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> str:
    """Ids -> compact text with single spaces; added schema tokens get spaces around them."""
    pieces = []
    for token in tokenizer.convert_ids_to_tokens([i for i in ids if i not in tokenizer.all_special_ids]):
        pieces.append(f" {token} " if token in tokenizer.added_tokens_encoder else token.replace("▁", " "))
    return " ".join("".join(pieces).split())


class T5CopyConfig(T5Config):
    model_type = "t5_copy"


class T5WithCopy(T5ForConditionalGeneration):
    """T5 with a pointer-generator copy head (See et al., 2017; TREQS copies the same way).

    Each output token is drawn from a mixture: the usual vocabulary distribution, or a pointer
    over the question's own tokens (one attention head from the decoder's last state onto the
    encoder's output), weighted by a learned gate. A small model trained from scratch copies a
    long rare value ("umbilical vein catheterization") token by token through the pointer
    instead of having to learn each word; input and target share one lower-cased tokenizer, so a
    copied token is the very id the target holds. `logits` are the mixture's log-probabilities,
    so `generate` (greedy or beam) and the Trainer's loss work unchanged.
    """

    config_class = T5CopyConfig

    def __init__(self, config: T5CopyConfig):
        super().__init__(config)
        self.copy_query = nn.Linear(config.d_model, config.d_model, bias=False)
        self.copy_gate = nn.Linear(2 * config.d_model, 1)

    def generate(self, inputs: torch.Tensor | None = None, **kwargs):
        # Decoding steps see only the encoder's output: hand them the question's ids as well.
        source = inputs if inputs is not None else kwargs.get("input_ids")
        kwargs.setdefault("source_ids", source)
        return super().generate(inputs, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None,
                labels=None, use_cache=None, source_ids=None, **kwargs) -> Seq2SeqLMOutput:
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, **kwargs)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        source = input_ids if source_ids is None else source_ids
        if source is None:
            raise ValueError("T5WithCopy needs the input ids (input_ids or source_ids) to copy from")
        encoded = encoder_outputs.last_hidden_state
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, inputs_embeds=decoder_inputs_embeds,
            past_key_values=past_key_values, encoder_hidden_states=encoded, encoder_attention_mask=attention_mask,
            use_cache=use_cache, **kwargs)
        vocab_log_probs, pointer, generate_share = self.copy_parts(decoder_outputs[0], encoded, attention_mask)
        if labels is not None and self.training:
            # Training needs only each label's probability: skip the (batch, length, vocabulary)
            # mixture, which would cost a third of the step.
            labels = labels.to(vocab_log_probs.device)
            target = labels.clamp_min(0)[..., None]
            from_vocab = vocab_log_probs.gather(-1, target).exp()
            from_question = (pointer * (source[:, None, :] == target)).sum(-1, keepdim=True)
            log_probs = torch.log(generate_share * from_vocab + (1 - generate_share) * from_question + 1e-10)
            kept = (labels != -100)[..., None]
            loss, logits = -(log_probs * kept).sum() / kept.sum().clamp_min(1), None
        else:
            logits, loss = self.mixture(vocab_log_probs, pointer, generate_share, source), None
            if labels is not None:
                loss = nn.functional.nll_loss(logits.view(-1, logits.size(-1)), labels.to(logits.device).view(-1),
                                              ignore_index=-100)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoded,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )

    def copy_parts(self, hidden: torch.Tensor, encoded: torch.Tensor, attention_mask: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At each decoder position (`hidden`: the decoder's last states): the vocabulary's
        log-probabilities, the pointer over the question's tokens (`encoded`), and the share drawn
        from the vocabulary (the gate)."""
        scaled = hidden * (self.model_dim ** -0.5) if self.config.scale_decoder_outputs else hidden
        vocab_log_probs = torch.log_softmax(self.lm_head(scaled).float(), dim=-1)
        # Pointer: attention of each decoder position over the question's tokens.
        scores = (self.copy_query(hidden) @ encoded.transpose(1, 2)).float() * (self.model_dim ** -0.5)
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        pointer = torch.softmax(scores, dim=-1)
        context = pointer.to(encoded.dtype) @ encoded
        generate_share = torch.sigmoid(self.copy_gate(torch.cat([hidden, context], dim=-1)).float())
        return vocab_log_probs, pointer, generate_share

    @staticmethod
    def mixture(vocab_log_probs: torch.Tensor, pointer: torch.Tensor, generate_share: torch.Tensor,
                source: torch.Tensor) -> torch.Tensor:
        """The output's log-probabilities over the vocabulary: the gate's mixture of the vocabulary's and
        the pointer's, whose weight on a question token goes to that token's id (`source`)."""
        copy_probs = torch.zeros_like(vocab_log_probs).scatter_add_(
            2, source[:, None, :].expand(-1, pointer.shape[1], -1), pointer)
        return torch.log(generate_share * vocab_log_probs.exp() + (1 - generate_share) * copy_probs + 1e-10)


# Model folders saved with the copy head load through AutoModelForSeq2SeqLM like any other.
AutoConfig.register(T5CopyConfig.model_type, T5CopyConfig)
AutoModelForSeq2SeqLM.register(T5CopyConfig, T5WithCopy)


# ---- dropout from random bytes -----------------------------------------------------------------
# On a CPU, torch's dropout draws one Bernoulli variate an element, and with 24 dropouts a step it
# was a quarter of the embedded model's training step. One random byte an element, four drawn at
# once as an int32, does the same job four times faster: the drop probability is rounded to a
# multiple of 1/256 (0.1 -> 26/256 = 0.1016) and the kept values scaled by 256 / (256 - that).
# Training alone: at inference both are the identity. Deterministic from torch's seed.


def byte_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout with a mask drawn from random bytes (p rounded to a multiple of 1/256)."""
    threshold = round(p * 256)
    if not training or threshold == 0:
        return x
    if threshold >= 256:
        return torch.zeros_like(x)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int32, device=x.device).random_(-2 ** 31, 2 ** 31)
    kept = words.view(torch.uint8)[: x.numel()].view(x.shape) >= threshold
    return x * kept.to(x.dtype).mul_(256 / (256 - threshold))


class ByteDropout(nn.Dropout):
    """`nn.Dropout` through `byte_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return byte_dropout(x, self.p, self.training)


BYTE_DROPOUT_ATTENTION = "medsql_eager_byte_dropout"


def _attention_with_byte_dropout(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attention_mask: torch.Tensor | None, scaling: float | None = None,
                                 dropout: float = 0.0, position_bias: torch.Tensor | None = None, **kwargs):
    """T5's eager attention (transformers' `eager_attention_forward`) with `byte_dropout` on the weights."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = byte_dropout(nn.functional.softmax(scores, dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(BYTE_DROPOUT_ATTENTION, _attention_with_byte_dropout)
# Masks as eager attention takes them (additive): without this, transformers builds no mask at all
# for an attention it does not know, neither the padding nor the decoder's causal one.
AttentionMaskInterface.register(BYTE_DROPOUT_ATTENTION, eager_mask)


def use_byte_dropout(model: nn.Module, on: bool = True) -> nn.Module:
    """The model with every dropout drawn from random bytes (its modules and T5's attention weights);
    on=False: back to torch's own dropout (what `medsql.bench --dropout-steps` compares with)."""
    old, new = (nn.Dropout, ByteDropout) if on else (ByteDropout, nn.Dropout)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is old:
                setattr(parent, name, new(child.p).train(child.training))
    model.set_attn_implementation(BYTE_DROPOUT_ATTENTION if on else "eager")
    return model


def build_scratch_model(tokenizer: PreTrainedTokenizerFast, shape: EmbeddedModel) -> T5ForConditionalGeneration:
    """The embedded profile's T5 at its initial weights (with the copy head if the shape asks for it),
    its dropout drawn from random bytes (`byte_dropout`)."""
    config_class = T5CopyConfig if shape.copy_mechanism else T5Config
    config = config_class(
        vocab_size=len(tokenizer),
        d_model=shape.d_model,
        d_ff=shape.d_ff,
        d_kv=shape.d_model // shape.num_heads,
        num_heads=shape.num_heads,
        num_layers=shape.num_layers,
        num_decoder_layers=shape.num_decoder_layers,
        dropout_rate=shape.dropout,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5WithCopy(config) if shape.copy_mechanism else T5ForConditionalGeneration(config)
    return use_byte_dropout(model)


def load_pretrained(name_or_path: str | Path):
    """The reference profile's base model and tokenizer: a hub id or a local folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(name_or_path))
    return model, tokenizer


def apply_lora(model, lora: Lora):
    """LoRA adapters (peft) on `lora.target_modules`; only they train."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
