"""Checks that need no model: numeric ranges, list and part counts, field combinations.

Every failure is an :class:`InvalidRequestError` naming the parameter. Rules that depend on
the model or on server features (context length, vocabulary, ``echo`` / ``suffix`` /
``prompt_logprobs`` with embeddings, the ``--enable-prompt-embeds`` gate) are the server's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

from pe_common.errors import InvalidRequestError
from pe_common.protocol.chat import ChatCompletionRequest
from pe_common.protocol.chat_message import ChatMessage, PromptEmbedsPart, TextPart
from pe_common.protocol.completion import CompletionRequest
from pe_common.protocol.limits import (
    DEFAULT_LIMITS,
    MAX_SEED,
    MAX_TOKEN_ID,
    MIN_SEED,
    RequestLimits,
)
from pe_common.protocol.tokenize import DetokenizeRequest, TokenizeRequest

EMPTY_PROMPT_MESSAGE = "Either prompt or prompt_embeds must be provided and non-empty."
BOTH_PROMPTS_MESSAGE = (
    "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
)

GenerateRequest = Union[CompletionRequest, ChatCompletionRequest]
# Message fields besides `content` and `tool_calls` that may hold text (`reasoning` may be
# an embeds part instead; only its text counts).
_MESSAGE_TEXT_FIELDS = ("name", "tool_call_id", "reasoning")
CACHE_SALT_MESSAGE = "Parameter 'cache_salt' must be a non-empty string if provided."  # vLLM's
# A salt is hashed once per request; the bound keeps what is forwarded to vLLM small.
MAX_CACHE_SALT_CHARS = 256


def validate_completion_request(
    req: CompletionRequest, limits: RequestLimits = DEFAULT_LIMITS
) -> None:
    """Raise :class:`InvalidRequestError` for the first model-free rule ``req`` breaks."""
    _check_sampling(req, limits)
    _check_prompts(req, limits)
    _check_max_tokens(req.max_tokens, "max_tokens", limits)
    _check_min_tokens(req.min_tokens, req.max_tokens, limits)
    _check_optional_int(req.logprobs, "logprobs", 0, limits.max_logprobs)
    _check_optional_int(req.prompt_logprobs, "prompt_logprobs", 0, limits.max_logprobs)
    check_cache_salt(req.cache_salt, max_chars=MAX_CACHE_SALT_CHARS)
    if req.best_of is not None and not req.n <= req.best_of <= limits.max_n:
        raise _error(f"`best_of` must be at least `n` and at most {limits.max_n}.", "best_of")
    num_prompts = len(req.prompt or []) + len(req.prompt_embeds or [])
    _check_num_seqs(num_prompts, req.n, req.best_of, limits)


def validate_chat_request(
    req: ChatCompletionRequest, limits: RequestLimits = DEFAULT_LIMITS
) -> None:
    """Raise :class:`InvalidRequestError` for the first model-free rule ``req`` breaks."""
    _check_messages(req.messages, limits)
    _check_sampling(req, limits)
    _check_num_seqs(1, req.n, None, limits)
    _check_max_tokens(req.max_tokens, "max_tokens", limits)
    _check_max_tokens(req.max_completion_tokens, "max_completion_tokens", limits)
    _check_min_tokens(req.min_tokens, req.effective_max_tokens, limits)
    _check_optional_int(req.top_logprobs, "top_logprobs", 0, limits.max_logprobs)
    _check_optional_int(req.prompt_logprobs, "prompt_logprobs", 0, limits.max_logprobs)
    check_cache_salt(req.cache_salt, max_chars=MAX_CACHE_SALT_CHARS)
    if req.top_logprobs and not req.logprobs:
        raise _error("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    if req.continue_final_message and req.add_generation_prompt:
        raise _error(BOTH_PROMPTS_MESSAGE, "continue_final_message")


def validate_tokenize_request(req: TokenizeRequest, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    if (req.prompt is None) == (req.messages is None):
        raise _error("Exactly one of `prompt` and `messages` must be given.", "prompt")
    if req.prompt is not None:
        _check_prompt_chars(len(req.prompt), "prompt", limits)
    if req.messages is not None:
        _check_messages(req.messages, limits)
        if req.continue_final_message and req.add_generation_prompt:
            raise _error(BOTH_PROMPTS_MESSAGE, "continue_final_message")


def validate_detokenize_request(
    req: DetokenizeRequest, limits: RequestLimits = DEFAULT_LIMITS
) -> None:
    if len(req.tokens) > limits.max_detokenize_tokens:
        raise _too_many(f"`tokens` may hold at most {limits.max_detokenize_tokens} ids.", "tokens")
    _check_token_ids(req.tokens, "tokens")


def check_cache_salt(salt: object, *, max_chars: int | None = None) -> None:
    """vLLM's rule (None, or a non-empty string), plus an optional length bound."""
    if salt is None:
        return
    if not isinstance(salt, str) or not salt:
        raise _error(CACHE_SALT_MESSAGE, "cache_salt")
    if max_chars is not None and len(salt) > max_chars:
        raise _error(f"`cache_salt` must be at most {max_chars} characters long.", "cache_salt")


def _check_prompts(req: CompletionRequest, limits: RequestLimits) -> None:
    prompts = req.prompt or []
    embeds = req.prompt_embeds or []
    if len(embeds) > limits.max_prompts:
        raise _too_many(
            f"prompt_embeds list length {len(embeds)} exceeds the maximum allowed count of "
            f"{limits.max_prompts}.",
            "prompt_embeds",
        )
    if len(prompts) > limits.max_prompts:
        raise _too_many(
            f"prompt list length {len(prompts)} exceeds the maximum allowed count of "
            f"{limits.max_prompts}.",
            "prompt",
        )
    if _is_empty(req.prompt) and not req.prompt_embeds:
        raise _error(EMPTY_PROMPT_MESSAGE, "prompt", code="missing_parameter")
    for prompt in prompts:
        if isinstance(prompt, list):
            if not prompt:
                raise _error("The decoder prompt cannot be empty", "prompt", code="empty_prompt")
            _check_token_ids(prompt, "prompt")
    _check_text_prompt_chars(prompts, limits)


def _check_num_seqs(num_prompts: int, n: int, best_of: int | None, limits: RequestLimits) -> None:
    """Each prompt runs max(n, best_of) sequences; name the field that pushed it over."""
    num_seqs = num_prompts * max(n, best_of or n)
    if num_seqs <= limits.max_seqs_per_request:
        return
    param = "n" if num_prompts * n > limits.max_seqs_per_request else "best_of"
    raise _too_many(
        f"The request would run {num_seqs} sequences (prompts times `n`, or `best_of` when "
        f"larger); the maximum is {limits.max_seqs_per_request}.",
        param,
    )


def _check_text_prompt_chars(prompts: list[str] | list[list[int]], limits: RequestLimits) -> None:
    total = 0
    for prompt in prompts:
        if isinstance(prompt, str):
            _check_prompt_chars(len(prompt), "prompt", limits)
            total += len(prompt)
    if total > limits.max_total_prompt_chars:
        raise _error(
            f"The text prompts in `prompt` hold {total} characters in total; the maximum is "
            f"{limits.max_total_prompt_chars}.",
            "prompt",
            code="prompt_too_long",
        )


def _check_prompt_chars(num_chars: int, param: str, limits: RequestLimits) -> None:
    # before tokenizing: a prompt far longer than any context costs nothing to refuse
    if num_chars > limits.max_prompt_chars:
        raise _error(
            f"`{param}` holds a text prompt of {num_chars} characters; the maximum is "
            f"{limits.max_prompt_chars}.",
            param,
            code="prompt_too_long",
        )


def _is_empty(prompt: Sequence[object] | None) -> bool:
    # vLLM counts None, "" and [] as an empty prompt; for prompt_embeds only None and []:
    # an empty payload is one that fails to load (400 naming prompt_embeds, from the codec).
    return not prompt or prompt == [""]


def _check_sampling(req: GenerateRequest, limits: RequestLimits) -> None:
    if not 1 <= req.n <= limits.max_n:
        raise _error(f"`n` must be between 1 and {limits.max_n}.", "n")
    if req.temperature is not None and _finite(req.temperature, "temperature") < 0:
        raise _error("`temperature` must be at least 0.", "temperature")
    if req.top_p is not None and not 0 < _finite(req.top_p, "top_p") <= 1:
        raise _error("`top_p` must be in (0, 1].", "top_p")
    if req.top_k is not None and not -1 <= req.top_k <= MAX_TOKEN_ID:
        raise _error("`top_k` must be -1 or 0 (disabled) or at least 1.", "top_k")
    if req.min_p is not None and not 0 <= _finite(req.min_p, "min_p") <= 1:
        raise _error("`min_p` must be in [0, 1].", "min_p")
    if (
        req.repetition_penalty is not None
        and _finite(req.repetition_penalty, "repetition_penalty") <= 0
    ):
        raise _error("`repetition_penalty` must be greater than 0.", "repetition_penalty")
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2 <= _finite(getattr(req, name), name) <= 2:
            raise _error(f"`{name}` must be in [-2, 2].", name)
    if req.seed is not None and not MIN_SEED <= req.seed <= MAX_SEED:
        raise _error("`seed` must fit in a signed 64-bit integer.", "seed")
    _check_optional_int(req.truncate_prompt_tokens, "truncate_prompt_tokens", 1, MAX_TOKEN_ID)
    _check_stop(req, limits)
    _check_logit_bias(req.logit_bias, limits)
    if req.stream_options is not None and not req.stream:
        raise _error("Stream options can only be defined when `stream=True`.", "stream_options")


def _check_stop(req: GenerateRequest, limits: RequestLimits) -> None:
    stop = req.stop or []
    if len(stop) > limits.max_stop_strings:
        raise _too_many(f"`stop` may hold at most {limits.max_stop_strings} strings.", "stop")
    for text in stop:
        if not text or len(text) > limits.max_stop_chars:
            raise _error(
                f"`stop` strings must be non-empty and at most {limits.max_stop_chars} "
                "characters long.",
                "stop",
            )
    stop_ids = req.stop_token_ids or []
    if len(stop_ids) > limits.max_stop_token_ids:
        raise _too_many(
            f"`stop_token_ids` may hold at most {limits.max_stop_token_ids} ids.", "stop_token_ids"
        )
    _check_token_ids(stop_ids, "stop_token_ids")


def _check_logit_bias(bias: dict[int, float] | None, limits: RequestLimits) -> None:
    if not bias:
        return
    if len(bias) > limits.max_logit_bias:
        raise _too_many(
            f"`logit_bias` may hold at most {limits.max_logit_bias} entries.", "logit_bias"
        )
    _check_token_ids(list(bias), "logit_bias")
    for value in bias.values():
        if not -100 <= _finite(value, "logit_bias") <= 100:
            raise _error("`logit_bias` values must be in [-100, 100].", "logit_bias")


def _check_messages(messages: list[ChatMessage], limits: RequestLimits) -> None:
    if not messages:
        raise _error("`messages` must hold at least one message.", "messages")
    if len(messages) > limits.max_messages:
        raise _too_many(f"`messages` may hold at most {limits.max_messages} messages.", "messages")
    num_parts = sum(_num_parts(m) for m in messages)
    if num_parts > limits.max_content_parts:
        raise _too_many(
            f"`messages` may hold at most {limits.max_content_parts} content parts in total.",
            "messages",
        )
    for message in messages:
        if message.content is None and message.role in ("system", "user"):
            raise _error(f"Messages with role `{message.role}` need `content`.", "messages")
    _check_prompt_chars(sum(_message_chars(m) for m in messages), "messages", limits)


def _num_parts(message: ChatMessage) -> int:
    """Content parts, counting an embeds ``reasoning`` as one more."""
    num_parts = len(message.content) if isinstance(message.content, list) else 0
    return num_parts + int(isinstance(message.reasoning, PromptEmbedsPart))


def _message_chars(message: ChatMessage) -> int:
    """Characters of the text a chat template may render from ``message``."""
    content = message.content
    texts: list[object] = [getattr(message, name) for name in _MESSAGE_TEXT_FIELDS]
    if isinstance(content, list):
        texts += [part.text for part in content if isinstance(part, TextPart)]
    else:
        texts.append(content)
    for call in message.tool_calls or []:
        texts += [call.id, call.function.name, call.function.arguments]
    return sum(len(text) for text in texts if isinstance(text, str))


def _check_max_tokens(value: int | None, name: str, limits: RequestLimits) -> None:
    _check_optional_int(value, name, 1, limits.max_tokens)


def _check_min_tokens(min_tokens: int, max_tokens: int | None, limits: RequestLimits) -> None:
    if not 0 <= min_tokens <= limits.max_tokens:
        raise _error(f"`min_tokens` must be between 0 and {limits.max_tokens}.", "min_tokens")
    if max_tokens is not None and min_tokens > max_tokens:
        raise _error("`min_tokens` must be less than or equal to `max_tokens`.", "min_tokens")


def _check_optional_int(value: int | None, name: str, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise _error(f"`{name}` must be between {low} and {high}.", name)


def _check_token_ids(ids: list[int], name: str) -> None:
    if ids and (min(ids) < 0 or max(ids) > MAX_TOKEN_ID):
        raise _error(f"Token ids in `{name}` must be between 0 and {MAX_TOKEN_ID}.", name)


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise _error(f"`{name}` must be a finite number.", name, code="invalid_number")
    return value


def _too_many(message: str, param: str) -> InvalidRequestError:
    return _error(message, param, code="too_many_inputs")


def _error(message: str, param: str, *, code: str = "invalid_parameter") -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param)
