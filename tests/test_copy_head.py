"""The embedded model's pointer-generator copy head (medsql.modeling.T5WithCopy)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from medsql.modeling import ByteDropout, T5CopyConfig, T5WithCopy, byte_dropout, use_byte_dropout

VOCAB = 64
PAD, EOS, NAME, IS = 0, 1, 2, 3
SEEN, UNSEEN = range(10, 54), range(54, 64)  # value words used in training / only at test time


def tiny(cls, config_cls, seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    config = config_cls(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=1,
                        num_decoder_layers=1, dropout_rate=dropout, pad_token_id=PAD, eos_token_id=EOS,
                        decoder_start_token_id=PAD)
    return cls(config)


def batch(words: range, size: int, generator: torch.Generator, length: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """'name is A [B]' -> 'A [B]': the answer is words of the question, as a template value is."""
    picks = torch.tensor(list(words))[torch.randint(len(words), (size, length), generator=generator)]
    head = torch.tensor([NAME, IS]).expand(size, 2)
    eos = torch.full((size, 1), EOS)
    return torch.cat([head, picks, eos], dim=1), torch.cat([picks, eos], dim=1)


def test_mixture_is_a_distribution_training_loss_matches_and_folder_reloads(tmp_path: Path) -> None:
    model = tiny(T5WithCopy, T5CopyConfig).eval()
    inputs, labels = batch(SEEN, 4, torch.Generator().manual_seed(1))
    out = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(labels.shape), atol=1e-4)
    # The training path computes only the labels' probabilities: the same loss.
    model.train()
    train_loss = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels).loss
    assert torch.allclose(train_loss, out.loss, atol=1e-5)
    model.eval()
    generated = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), num_beams=3,
                               max_new_tokens=4)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, T5WithCopy)
    assert torch.equal(reloaded.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), num_beams=3,
                                         max_new_tokens=4), generated)


def copy_accuracy(model, steps: int = 300) -> float:
    """Train on one-word SEEN values, then score exact answers on UNSEEN ones (greedy)."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        inputs, labels = batch(SEEN, 32, generator, length=1)
        loss = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    inputs, labels = batch(UNSEEN, 64, generator, length=1)
    with torch.inference_mode():
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=2,
                             num_beams=1)
    out = torch.nn.functional.pad(out, (0, 3 - out.shape[1]), value=PAD)  # all stopped early: still 3 wide
    return float((out[:, 1:3] == labels).all(dim=1).float().mean())


def test_copy_head_copies_values_never_seen_in_any_target() -> None:
    # Words that no training target holds: the pointer copies them; plain T5 seldom gets there
    # (only through its tied input/output embeddings).
    with_copy = copy_accuracy(tiny(T5WithCopy, T5CopyConfig))
    without = copy_accuracy(tiny(T5ForConditionalGeneration, T5Config))
    assert with_copy >= 0.75, with_copy
    assert without <= 0.5, without


def test_byte_dropout_drops_the_share_asked_scales_the_rest_and_is_the_identity_in_eval():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    y = byte_dropout(x, 0.1)
    assert abs((y == 0).float().mean().item() - 26 / 256) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 256 / 230))
    torch.manual_seed(0)
    assert torch.equal(y, byte_dropout(x, 0.1)), "the same seed draws the same mask"
    layer = ByteDropout(0.1).eval()
    assert torch.equal(layer(x), x) and torch.equal(byte_dropout(x, 0.0), x)


def test_every_dropout_of_the_model_draws_from_bytes_and_its_outputs_are_unchanged_in_eval() -> None:
    model = tiny(T5WithCopy, T5CopyConfig, dropout=0.1).eval()
    ids = torch.tensor([[5, 6, 7, EOS]])
    before = model(input_ids=ids, decoder_input_ids=torch.tensor([[PAD, 5]])).logits
    use_byte_dropout(model)
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert torch.allclose(model(input_ids=ids, decoder_input_ids=torch.tensor([[PAD, 5]])).logits, before)
    model.train()
    torch.manual_seed(1)
    loss = model(input_ids=ids, labels=torch.tensor([[5, 6, EOS]])).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_byte_dropout_can_be_turned_back_into_torchs_own_dropout() -> None:
    model = tiny(T5WithCopy, T5CopyConfig, dropout=0.1).eval()
    use_byte_dropout(model)
    count = sum(type(m) is ByteDropout for m in model.modules())
    use_byte_dropout(model, on=False)
    assert count and not [m for m in model.modules() if type(m) is ByteDropout]
    assert sum(type(m) is torch.nn.Dropout for m in model.modules()) == count
    assert all(not m.training for m in model.modules()), "each module keeps its eval mode"
    assert model.config._attn_implementation == "eager"
