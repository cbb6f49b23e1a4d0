"""Engine logprobs -> the completions format and the chat format (vLLM's conventions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pe_common.protocol import (
    ChatCompletionLogprobs,
    ChatCompletionTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)

if TYPE_CHECKING:
    from pe_engine.outputs import Logprob

# OpenAI's JSON stand-in for -inf.
MIN_LOGPROB = -9999.0


def clamp(value: float) -> float:
    return max(value, MIN_LOGPROB)


def token_text(token_id: int, logprob: Logprob | None, tokenizer: Any) -> str:
    if logprob is not None and logprob.decoded_token is not None:
        return str(logprob.decoded_token)
    return str(tokenizer.decode([token_id]))


def ranked(step: dict[int, Logprob]) -> list[tuple[int, Logprob]]:
    """The step's entries, most likely first."""
    return sorted(step.items(), key=lambda item: (item[1].rank, -item[1].logprob))


def completion_logprobs(
    token_ids: Sequence[int],
    steps: Sequence[dict[int, Logprob]],
    num_top: int,
    tokenizer: Any,
    initial_offset: int = 0,
) -> CompletionLogprobs:
    """``tokens``, ``token_logprobs``, ``top_logprobs`` (the sampled token plus the top
    ``num_top``, at most ``num_top + 1`` entries) and ``text_offset``."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    offset = initial_offset
    for token_id, step in zip(token_ids, steps, strict=True):
        sampled = step.get(token_id)
        text = token_text(token_id, sampled, tokenizer)
        tokens.append(text)
        token_logprobs.append(clamp(sampled.logprob) if sampled is not None else None)
        top: dict[str, float] = {}
        if sampled is not None:
            top[text] = clamp(sampled.logprob)
        for tid, lp in ranked(step):
            if len(top) > num_top:
                break
            top.setdefault(token_text(tid, lp, tokenizer), clamp(lp.logprob))
        top_logprobs.append(top)
        text_offset.append(offset)
        offset += len(text)
    return CompletionLogprobs(
        text_offset=text_offset,
        token_logprobs=token_logprobs,
        tokens=tokens,
        top_logprobs=top_logprobs,
    )


def chat_logprobs(
    token_ids: Sequence[int],
    steps: Sequence[dict[int, Logprob]],
    num_top: int,
    tokenizer: Any,
) -> ChatCompletionLogprobs:
    """One entry per generated token, each with the ``num_top`` most likely alternatives."""
    content = []
    for token_id, step in zip(token_ids, steps, strict=True):
        sampled = step.get(token_id)
        text = token_text(token_id, sampled, tokenizer)
        top = [
            TopLogprob(
                token=(piece := token_text(tid, lp, tokenizer)),
                logprob=clamp(lp.logprob),
                bytes=list(piece.encode("utf-8")),
            )
            for tid, lp in ranked(step)[:num_top]
        ]
        content.append(
            ChatCompletionTokenLogprob(
                token=text,
                logprob=clamp(sampled.logprob) if sampled is not None else MIN_LOGPROB,
                bytes=list(text.encode("utf-8")),
                top_logprobs=top,
            )
        )
    return ChatCompletionLogprobs(content=content)
