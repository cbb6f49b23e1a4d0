"""Incremental detokenization: whole characters only, stop strings, special tokens."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from pe_engine.core.detokenizer import IncrementalDetokenizer

TEXT = "Hello, wörld! 日本語のテキスト and emoji 🙂🙃 end."


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def feed(detok: IncrementalDetokenizer, ids: list[int]) -> tuple[list[str], str | None]:
    texts = []
    for token_id in ids:
        stop = detok.update(token_id)
        texts.append(detok.get_text(finished=stop is not None))
        if stop is not None:
            return texts, stop
    return texts, None


def test_incremental_text_equals_decode_and_never_splits_a_character(tokenizer: Any) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    texts, stop = feed(IncrementalDetokenizer(tokenizer, []), ids)
    assert stop is None
    assert texts[-1] == tokenizer.decode(ids) == TEXT
    assert all("\ufffd" not in t for t in texts)
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))


def test_prompt_context_keeps_leading_space(tokenizer: Any) -> None:
    prompt = tokenizer.encode("The answer is", add_special_tokens=False)
    out = tokenizer.encode(" forty two", add_special_tokens=False)
    texts, _ = feed(IncrementalDetokenizer(tokenizer, prompt), out)
    assert texts[-1] == " forty two"


@pytest.mark.parametrize("include", [False, True])
def test_stop_string(tokenizer: Any, include: bool) -> None:
    ids = tokenizer.encode("one two three four five", add_special_tokens=False)
    detok = IncrementalDetokenizer(
        tokenizer, [], stop=["thr", "zzz"], include_stop_str_in_output=include
    )
    texts, stop = feed(detok, ids)
    assert stop == "thr"
    assert texts[-1] == ("one two thr" if include else "one two ")
    # While streaming, a possible stop-string prefix is held back (unless it is to be shown).
    if not include:
        assert all(len(t) <= len(tokenizer.decode(ids[: i + 1])) - 2 or not t
                   for i, t in enumerate(texts[:-1]))  # fmt: skip


def test_stop_string_spanning_tokens_and_min_tokens(tokenizer: Any) -> None:
    ids = tokenizer.encode("abc abc abc", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [], stop=["c a"])
    _, stop = feed(detok, ids)
    assert stop == "c a" and detok.output_text == "ab"
    late = IncrementalDetokenizer(tokenizer, [], stop=["abc"], min_tokens=len(ids))
    _, stop = feed(late, ids)
    assert stop is None  # stop strings only count after min_tokens


def test_special_tokens_and_stop_tokens(tokenizer: Any) -> None:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [*tokenizer.encode("hi", add_special_tokens=False), end]
    skipped = IncrementalDetokenizer(tokenizer, [])
    feed(skipped, ids)
    assert skipped.output_text == "hi"
    kept = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    feed(kept, ids)
    assert kept.output_text == "hi<|im_end|>"
    stop_token = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    feed(stop_token, ids[:-1])
    stop_token.update(end, is_stop_token=True)
    assert stop_token.output_text == "hi"  # a stop token's text is left out
