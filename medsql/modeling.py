"""Models and tokenizers for both profiles.

- reference: a pretrained seq2seq checkpoint (`google/flan-t5-base` or any hub id / local folder)
  through `from_pretrained`, adapted with LoRA (peft); targets are the dataset's SQL.
- embedded: a T5 built from a `T5Config` and trained from scratch on CPU, with a tokenizer
  trained on the training split. Its targets are the compact form (medsql.sqlform), in which every
  `table.column`, aggregate and operator is a single token: about 14 tokens a query instead of ~50.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

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


def decode_compact(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> str:
    """Ids -> compact text with single spaces; added schema tokens get spaces around them."""
    pieces = []
    for token in tokenizer.convert_ids_to_tokens([i for i in ids if i not in tokenizer.all_special_ids]):
        pieces.append(f" {token} " if token in tokenizer.added_tokens_encoder else token.replace("▁", " "))
    return " ".join("".join(pieces).split())


def build_scratch_model(tokenizer: PreTrainedTokenizerFast, shape: dict[str, Any]) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=shape["d_model"],
        d_ff=shape["d_ff"],
        d_kv=shape["d_model"] // shape["num_heads"],
        num_heads=shape["num_heads"],
        num_layers=shape["num_layers"],
        num_decoder_layers=shape["num_decoder_layers"],
        dropout_rate=shape["dropout"],
        feed_forward_proj=shape.get("feed_forward_proj", "relu"),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config)


def load_pretrained(name_or_path: str | Path):
    """The reference profile's base model and tokenizer: a hub id or a local folder."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(name_or_path))
    return model, tokenizer


def apply_lora(model, lora: dict[str, Any]):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
    )
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
