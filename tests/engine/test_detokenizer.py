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
    """The text shown after each token (every piece taken so far), and the stop string."""
    texts, shown = [], ""
    for token_id in ids:
        stop = detok.update(token_id)
        shown += detok.take_text(finished=stop is not None)
        texts.append(shown)
        if stop is not None:
            return texts, stop
    return texts, None


def final_text(detok: IncrementalDetokenizer, texts: list[str]) -> str:
    """What the sequence ends with: the text shown, then whatever was held back."""
    return (texts[-1] if texts else "") + detok.take_text(finished=True)


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
    texts, stop = feed(detok, ids)
    assert stop == "c a" and final_text(detok, texts) == "ab"
    late = IncrementalDetokenizer(tokenizer, [], stop=["abc"], min_tokens=len(ids))
    _, stop = feed(late, ids)
    assert stop is None  # stop strings only count after min_tokens


def test_special_tokens_and_stop_tokens(tokenizer: Any) -> None:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [*tokenizer.encode("hi", add_special_tokens=False), end]
    skipped = IncrementalDetokenizer(tokenizer, [])
    assert final_text(skipped, feed(skipped, ids)[0]) == "hi"
    kept = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    assert final_text(kept, feed(kept, ids)[0]) == "hi<|im_end|>"
    stop_token = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    texts, _ = feed(stop_token, ids[:-1])
    stop_token.update(end, is_stop_token=True)
    assert final_text(stop_token, texts) == "hi"  # a stop token's text is left out


def test_held_back_text_stays_bounded_and_is_released_at_the_end(tokenizer: Any) -> None:
    """After each token the detokenizer holds at most the stop buffer (its work does not grow
    with the output), and a finish without a stop string releases what it held."""
    ids = tokenizer.encode("lorem ipsum dolor sit amet " * 40, add_special_tokens=False)
    stop = "never matches"
    detok = IncrementalDetokenizer(tokenizer, [], stop=[stop])
    shown = ""
    for token_id in ids:
        assert detok.update(token_id) is None
        shown += detok.take_text(finished=False)
        assert len(detok._pending) <= len(stop) - 1 and len(detok._context) <= len(stop) - 1
    assert len(shown) == len(tokenizer.decode(ids)) - (len(stop) - 1)
    assert shown + detok.take_text(finished=True) == tokenizer.decode(ids)
