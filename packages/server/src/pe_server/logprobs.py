"""Engine logprobs -> the completions format and the chat format (vLLM's conventions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pe_common.protocol import logprobs as wire

if TYPE_CHECKING:
    from pe_engine.outputs import Logprob, RequestOutput

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
    steps: Sequence[dict[int, Logprob] | None],
    num_top: int,
    tokenizer: Any,
    initial_offset: int = 0,
) -> wire.CompletionLogprobs:
    """``tokens``, ``token_logprobs``, ``top_logprobs`` (the sampled token plus the top
    ``num_top``, at most ``num_top + 1`` entries) and ``text_offset``. A None step (an echoed
    prompt's first token) has a null logprob and null top entries, as in vLLM."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    offset = initial_offset
    for token_id, step in zip(token_ids, steps, strict=True):
        sampled = None if step is None else step.get(token_id)
        text = token_text(token_id, sampled, tokenizer)
        tokens.append(text)
        token_logprobs.append(clamp(sampled.logprob) if sampled is not None else None)
        text_offset.append(offset)
        offset += len(text)
        if step is None:
            top_logprobs.append(None)
            continue
        top: dict[str, float] = {}
        if sampled is not None:
            top[text] = clamp(sampled.logprob)
        for tid, lp in ranked(step):
            if len(top) > num_top:
                break
            top.setdefault(token_text(tid, lp, tokenizer), clamp(lp.logprob))
        top_logprobs.append(top)
    return wire.CompletionLogprobs(
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
) -> wire.ChatCompletionLogprobs:
    """One entry per generated token, each with the ``num_top`` most likely alternatives."""
    content = []
    for token_id, step in zip(token_ids, steps, strict=True):
        sampled = step.get(token_id)
        text = token_text(token_id, sampled, tokenizer)
        top = [
            wire.TopLogprob(
                token=(piece := token_text(tid, lp, tokenizer)),
                logprob=clamp(lp.logprob),
                bytes=list(piece.encode("utf-8")),
            )
            for tid, lp in ranked(step)[:num_top]
        ]
        content.append(
            wire.ChatCompletionTokenLogprob(
                token=text,
                logprob=clamp(sampled.logprob) if sampled is not None else MIN_LOGPROB,
                bytes=list(text.encode("utf-8")),
                top_logprobs=top,
            )
        )
    return wire.ChatCompletionLogprobs(content=content)


def wire_prompt_logprobs(output: RequestOutput) -> wire.PromptLogprobs | None:
    """vLLM's ``prompt_logprobs``: per prompt position the prompt token and the top entries,
    keyed by token id; None at the first position and at embedding rows."""
    if output.prompt_logprobs is None:
        return None
    return [
        None
        if step is None
        else {
            token_id: wire.PromptLogprob(
                logprob=clamp(lp.logprob), rank=lp.rank, decoded_token=lp.decoded_token
            )
            for token_id, lp in step.items()
        }
        for step in output.prompt_logprobs
    ]
