"""Which tokens generation may never produce."""

from __future__ import annotations

from prism.backbones.tiny import build_tokenizer
from prism.inference.generate import suppressed_token_ids


def test_special_tokens_and_padding_rows_are_suppressed_but_eos_is_not():
    tokenizer = build_tokenizer()
    image = tokenizer.convert_tokens_to_ids("<image>")
    plain = suppressed_token_ids(tokenizer)
    assert image in plain and tokenizer.eos_token_id not in plain
    assert max(plain) < len(tokenizer)
    padded = suppressed_token_ids(tokenizer, len(tokenizer) + 5)
    assert set(padded) - set(plain) == set(range(len(tokenizer), len(tokenizer) + 5))
    word = tokenizer.convert_tokens_to_ids("red")
    assert word not in padded
