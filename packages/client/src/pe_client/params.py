"""The optional request fields of ``completions.create`` and ``chat.completions.create``.

Declared once as TypedDicts (shared by the sync and async resources, checked by type checkers
through ``**params: Unpack[...]``, and checked at run time: an unknown keyword is a TypeError).
Names and meanings are OpenAI's plus vLLM's sampling extras, exactly the fields of pe's request
schema (``pe_common.protocol``); anything else (another server's extras) goes through
``extra_body``. ``CompletionArgs`` / ``ChatCompletionArgs`` add the other keywords (model, the
prompt or messages, and the per-request ``RequestExtras``): the ``create`` overloads take them,
so that each overload only says how ``stream`` decides the return type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

from typing_extensions import Required, TypedDict

from pe_client._base import NotGiven, TimeoutTypes

Stop = Union[str, list[str]]
PromptInput = Union[str, list[str], list[int], list[list[int]]]


class StreamOptions(TypedDict, total=False):
    include_usage: bool
    continuous_usage_stats: bool


class SamplingParams(TypedDict, total=False):
    """Fields shared by both endpoints."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    n: int
    seed: int
    stop: Stop
    stop_token_ids: list[int]
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: dict[str, float]
    min_tokens: int
    ignore_eos: bool
    include_stop_str_in_output: bool
    skip_special_tokens: bool
    stream_options: StreamOptions
    return_token_ids: bool
    echo: bool
    prompt_logprobs: int
    add_special_tokens: bool
    truncate_prompt_tokens: int
    response_format: dict[str, Any]
    # vLLM's constraint object (json, regex, choice, grammar, json_object and their options)
    # and its older aliases; at most one constraint per request.
    structured_outputs: dict[str, Any]
    guided_json: Union[dict[str, Any], str]
    guided_regex: str
    guided_choice: list[str]
    guided_grammar: str
    guided_whitespace_pattern: str
    guided_decoding_backend: str
    user: str
    # vLLM's prefix-cache partition: only requests with the same salt share cached blocks.
    cache_salt: str


class CompletionParams(SamplingParams, total=False):
    """``/v1/completions`` fields besides model, prompt, prompt_embeds and stream."""

    best_of: int
    logprobs: int
    suffix: str


class ChatCompletionParams(SamplingParams, total=False):
    """``/v1/chat/completions`` fields besides model, messages and stream."""

    logprobs: bool
    top_logprobs: int
    max_completion_tokens: int
    chat_template: str
    chat_template_kwargs: dict[str, Any]
    add_generation_prompt: bool
    continue_final_message: bool
    tools: list[dict[str, Any]]
    tool_choice: Union[str, dict[str, Any]]
    parallel_tool_calls: bool


class RequestExtras(TypedDict, total=False):
    """Per-request additions and overrides, accepted by every call."""

    extra_headers: Mapping[str, str] | None
    extra_body: Mapping[str, object] | None
    timeout: TimeoutTypes | NotGiven


class CompletionArgs(CompletionParams, RequestExtras, total=False):
    """Every keyword of ``completions.create`` but ``stream`` (its overloads' parameters)."""

    model: Required[str]
    prompt: PromptInput | None
    prompt_embeds: object | None


class ChatCompletionArgs(ChatCompletionParams, RequestExtras, total=False):
    """Every keyword of ``chat.completions.create`` but ``stream`` (its overloads' parameters)."""

    model: Required[str]
    messages: Required[Iterable[Mapping[str, Any]]]


def checked_params(
    params: Mapping[str, object], allowed: type[Any], endpoint: str
) -> dict[str, object]:
    """``params`` without ``None`` values; an unknown name raises TypeError like a bad keyword."""
    names: frozenset[str] = allowed.__optional_keys__ | allowed.__required_keys__
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(
            f"{endpoint}.create() got unexpected keyword argument(s) {', '.join(unknown)}; "
            "pass server-specific fields through extra_body={...}"
        )
    return {name: value for name, value in params.items() if value is not None}
