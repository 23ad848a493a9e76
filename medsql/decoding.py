"""Beam search for the embedded model, without transformers' per-step machinery around its arithmetic.

The embedded T5 is small (2 + 2 layers, d_model 256), so `generate` spends much of each decoding
step in module calls, mask building and cache objects rather than in arithmetic. `beam_search`
runs the same search with less around it, in about a quarter less time on two cores (README,
Benchmarks; `python -m medsql.bench --search-questions N` times the two in turn):

- each decoder step does the operations `T5WithCopy.forward` does through transformers' T5 modules
  (layer norm, projections, `scaled_dot_product_attention` with the same bias and mask, the copy
  head's `copy_parts` and `mixture`), in the same order, on the same weights and the same tensor
  shapes, so the numbers are the same to the bit;
- the choice of beams is transformers' own: its beam-search helpers (`_get_top_k_continuations`,
  `_update_finished_beams`, ...) called in the order its `_beam_search` calls them, with the
  settings the model folder gives (`Predictor.generation_config`).

`tests/test_decoding.py` holds that `beam_search` returns the sequences and scores `generate` returns,
exactly, on real questions in batches with padding. Where a setting would add work this search
does not do (a logits processor, sampling, another attention, another model), `applies` is False
and the Predictor calls `generate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

# The settings under which transformers' beam search adds no logits processor and no output this
# search does not produce: each as `GenerationConfig` has it by default (or unset: None).
PLAIN_SETTINGS: dict[str, Any] = {
    "do_sample": False, "num_beam_groups": 1, "diversity_penalty": 0.0, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "min_length": 0, "min_new_tokens": None, "bad_words_ids": None, "force_words_ids": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "remove_invalid_values": False,
    "renormalize_logits": False, "exponential_decay_length_penalty": None, "output_attentions": False,
    "output_hidden_states": False, "output_logits": None, "low_memory": None, "use_cache": True,
    "stop_strings": None, "max_time": None, "watermarking_config": None,
}

# transformers' beam-search helpers this search calls (GenerationMixin's, as of the pinned 5.23): a
# version without them answers through `generate`, and tests/test_decoding.py checks the rest.
HELPERS = ("_get_top_k_continuations", "_get_running_beams_for_next_iteration", "_update_finished_beams",
           "_check_early_stop_heuristic", "_beam_search_has_unfinished_sequences")


def applies(model: Any, settings: Any) -> bool:
    """Whether `beam_search` gives what `model.generate(..., generation_config=settings)` gives: the
    embedded profile's copy model in inference, T5's relu feed-forward and sdpa attention, a beam of
    two or more, and nothing in `settings` beyond `PLAIN_SETTINGS`, a length and the beam; and
    transformers still has the `HELPERS` this search calls."""
    from medsql.modeling import T5WithCopy

    config = getattr(model, "config", None)
    return (type(model) is T5WithCopy and not model.training and all(hasattr(model, name) for name in HELPERS)
            and config._attn_implementation == "sdpa" and not config.is_gated_act
            and config.dense_act_fn == "relu" and (settings.num_beams or 1) > 1
            and settings.max_new_tokens is not None and settings.eos_token_id is not None
            and settings.pad_token_id is not None and settings.decoder_start_token_id is not None
            and all(getattr(settings, name, None) in (None, default) for name, default in PLAIN_SETTINGS.items()))


def _norm(layer_norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """T5LayerNorm.forward (float32 weights)."""
    variance = hidden.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return layer_norm.weight * (hidden * torch.rsqrt(variance + layer_norm.variance_epsilon))


def _heads(states: torch.Tensor, heads: int, width: int) -> torch.Tensor:
    """(rows, length, heads * width) -> (rows, heads, length, width), as T5Attention views them."""
    return states.view(*states.shape[:-1], heads, width).transpose(1, 2)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
            out: torch.nn.Linear) -> torch.Tensor:
    """transformers' sdpa_attention_forward with a position-bias mask, then T5Attention's output projection."""
    attended = functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=0.0,
                                                       scale=1.0, is_causal=False)
    attended = attended.transpose(1, 2).contiguous()
    return out(attended.reshape(*attended.shape[:2], -1).contiguous())


@torch.inference_mode()
def beam_search(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences, their scores): what `model.generate(input_ids=..., attention_mask=...,
    generation_config=settings)` returns as `sequences` and `sequences_scores`, where `applies`."""
    from transformers.masking_utils import create_bidirectional_mask

    beams, batch = settings.num_beams, input_ids.shape[0]
    # generate: the encoder once a question, its outputs and inputs repeated for each beam.
    encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    encoded = encoded.repeat_interleave(beams, dim=0)
    source = input_ids.repeat_interleave(beams, dim=0)
    mask = attention_mask.repeat_interleave(beams, dim=0)
    rows = batch * beams

    decoder = model.decoder
    blocks = list(decoder.block)
    first = blocks[0].layer[0].SelfAttention
    heads, width = first.n_heads, first.key_value_proj_dim
    max_length = 1 + settings.max_new_tokens
    # The relative position bias of the decoder's self-attention, every step's row at once (its
    # buckets depend only on the distance, so a row of it is what `compute_bias` gives that step).
    position_bias = first.compute_bias(max_length, max_length)
    embeds = torch.zeros((rows, 1, model.config.d_model), dtype=encoded.dtype, device=encoded.device)
    padding = create_bidirectional_mask(config=decoder.config, inputs_embeds=embeds, attention_mask=mask,
                                        encoder_hidden_states=encoded)
    zeros = torch.zeros((1, heads, 1, encoded.shape[1]), dtype=encoded.dtype, device=encoded.device)
    cross_mask = (zeros if padding is None
                  else torch.where(padding, zeros, torch.finfo(encoded.dtype).min)).contiguous()
    empty = torch.tensor([], dtype=encoded.dtype, device=encoded.device)
    cross = [(torch.cat([empty, _heads(block.layer[1].EncDecAttention.k(encoded), heads, width)], dim=-2),
              torch.cat([empty, _heads(block.layer[1].EncDecAttention.v(encoded), heads, width)], dim=-2))
             for block in blocks]
    past: list[tuple[torch.Tensor, torch.Tensor]] = [(empty, empty) for _ in blocks]

    def step(tokens: torch.Tensor, position: int) -> torch.Tensor:
        """The next token's log-probabilities for each row, given its last token (T5WithCopy.forward)."""
        hidden = decoder.embed_tokens(tokens)
        bias = position_bias[:, :, position:position + 1, :position + 1].contiguous()
        for number, block in enumerate(blocks):
            attention = block.layer[0].SelfAttention
            normed = _norm(block.layer[0].layer_norm, hidden)
            keys, values = past[number]
            keys = torch.cat([keys, _heads(attention.k(normed), heads, width)], dim=-2)
            values = torch.cat([values, _heads(attention.v(normed), heads, width)], dim=-2)
            past[number] = keys, values
            hidden = hidden + _attend(_heads(attention.q(normed), heads, width), keys, values, bias, attention.o)
            attention = block.layer[1].EncDecAttention
            normed = _norm(block.layer[1].layer_norm, hidden)
            hidden = hidden + _attend(_heads(attention.q(normed), heads, width), *cross[number], cross_mask,
                                      attention.o)
            dense = block.layer[2].DenseReluDense
            normed = _norm(block.layer[2].layer_norm, hidden)
            hidden = hidden + dense.wo(torch.relu(dense.wi(normed)))
        hidden = _norm(decoder.final_layer_norm, hidden)
        logits = model.mixture(*model.copy_parts(hidden, encoded, mask), source)
        return functional.log_softmax(logits[:, -1, :].to(copy=True, dtype=torch.float32), dim=-1)

    # transformers' _beam_search, step for step (its static shapes, its helpers).
    eos = torch.tensor([settings.eos_token_id] if isinstance(settings.eos_token_id, int)
                       else list(settings.eos_token_id), device=encoded.device)
    # generate's defaults for what the settings leave unset.
    length_penalty = 1.0 if settings.length_penalty is None else settings.length_penalty
    early_stopping = False if settings.early_stopping is None else settings.early_stopping
    pad = settings.pad_token_id
    fill = pad if pad else int(eos[0])
    beams_to_keep = max(2, 1 + eos.shape[0]) * beams
    device = encoded.device
    top_num_beam_mask = torch.arange(beams_to_keep, device=device) < beams
    running_sequences = torch.full((batch, beams, max_length), fill, dtype=torch.int64, device=device)
    running_sequences[:, :, 0] = settings.decoder_start_token_id
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros((batch, beams), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = -1e9
    beam_scores = torch.full((batch, beams), -1e9, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    unsatisfied = torch.ones((batch, 1), dtype=torch.bool, device=device)
    running_beam_indices = torch.full((batch, beams, max_length - 1), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    tokens = running_sequences[:, :, 0].reshape(rows, 1)
    cur_len, finished = 1, False
    while not finished:
        log_probs = step(tokens, cur_len - 1).view(batch, beams, -1) + running_beam_scores[:, :, None]
        topk_log_probs, topk_sequences, topk_beam_indices = model._get_top_k_continuations(
            accumulated_log_probs=log_probs.reshape(batch, -1), running_sequences=running_sequences,
            running_beam_indices=running_beam_indices, cur_len=cur_len, decoder_prompt_len=1, do_sample=False,
            beams_to_keep=beams_to_keep, num_beams=beams, batch_size=batch)
        # transformers' stopping criteria: the length, or an end-of-sequence token.
        hits = (torch.isin(topk_sequences[:, :, cur_len], eos) | (cur_len + 1 >= max_length))
        running_sequences, running_beam_scores, running_beam_indices = model._get_running_beams_for_next_iteration(
            topk_log_probs=topk_log_probs, topk_running_sequences=topk_sequences,
            topk_running_beam_indices=topk_beam_indices, next_token_hits_stopping_criteria=hits, num_beams=beams)
        sequences, beam_scores, beam_indices, is_sent_finished = model._update_finished_beams(
            sequences=sequences, topk_running_sequences=topk_sequences, beam_scores=beam_scores,
            topk_log_probs=topk_log_probs, beam_indices=beam_indices, topk_running_beam_indices=topk_beam_indices,
            is_early_stop_heuristic_unsatisfied=unsatisfied, is_sent_finished=is_sent_finished,
            next_token_hits_stopping_criteria=hits, top_num_beam_mask=top_num_beam_mask, num_beams=beams,
            cur_len=cur_len, decoder_prompt_len=1, length_penalty=length_penalty,
            early_stopping=early_stopping)
        order = running_beam_indices[..., cur_len - 1].reshape(rows)
        past = [(keys.index_select(0, order), values.index_select(0, order)) for keys, values in past]
        cross = [(keys.index_select(0, order), values.index_select(0, order)) for keys, values in cross]
        cur_len += 1
        unsatisfied = model._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=unsatisfied, running_beam_scores=running_beam_scores,
            beam_scores=beam_scores, is_sent_finished=is_sent_finished, cur_len=cur_len, max_length=max_length,
            decoder_prompt_len=1, early_stopping=early_stopping, length_penalty=length_penalty)
        finished = not model._beam_search_has_unfinished_sequences(unsatisfied, is_sent_finished, hits,
                                                                   early_stopping)
        tokens = running_sequences[:, :, cur_len - 1].reshape(rows, 1)

    returned = settings.num_return_sequences or 1
    sequences = sequences[:, :returned, :].reshape(batch * returned, -1)
    beam_scores = beam_scores[:, :returned].reshape(-1)
    beam_indices = beam_indices[:, :returned, :].reshape(batch * returned, -1)
    length = 1 + int(((beam_indices + 1).bool()).sum(dim=1).max())
    return sequences[:, :length], beam_scores
