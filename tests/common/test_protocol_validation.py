"""Every model-free rule fires with the right parameter and code."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from pe_common.errors import InvalidRequestError
from pe_common.protocol import (
    RequestLimits,
    decode_chat_request,
    decode_completion_request,
    decode_detokenize_request,
    decode_tokenize_request,
)

USER = [{"role": "user", "content": "hi"}]


def completion_error(
    body: dict[str, Any], limits: RequestLimits | None = None
) -> InvalidRequestError:
    raw = json.dumps({"prompt": "x", **body}).encode()
    with pytest.raises(InvalidRequestError) as info:
        if limits is None:
            decode_completion_request(raw, "json")
        else:
            decode_completion_request(raw, "json", limits=limits)
    return info.value


def chat_error(body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        decode_chat_request(json.dumps({"messages": USER, **body}).encode(), "json")
    return info.value


SAMPLING_CASES = [
    ({"n": 0}, "n", "invalid_parameter"),
    ({"n": 129}, "n", "invalid_parameter"),
    ({"n": 10**30}, "n", "invalid_parameter"),
    ({"temperature": -0.1}, "temperature", "invalid_parameter"),
    ({"top_p": 0}, "top_p", "invalid_parameter"),
    ({"top_p": 1.01}, "top_p", "invalid_parameter"),
    ({"top_k": -2}, "top_k", "invalid_parameter"),
    ({"min_p": 1.5}, "min_p", "invalid_parameter"),
    ({"min_p": -0.1}, "min_p", "invalid_parameter"),
    ({"repetition_penalty": 0}, "repetition_penalty", "invalid_parameter"),
    ({"presence_penalty": 2.5}, "presence_penalty", "invalid_parameter"),
    ({"frequency_penalty": -2.5}, "frequency_penalty", "invalid_parameter"),
    ({"seed": 2**63}, "seed", "invalid_parameter"),
    ({"seed": -(2**63) - 1}, "seed", "invalid_parameter"),
    ({"max_tokens": 0}, "max_tokens", "invalid_parameter"),
    ({"max_tokens": 2**20 + 1}, "max_tokens", "invalid_parameter"),
    ({"min_tokens": -1}, "min_tokens", "invalid_parameter"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens", "invalid_parameter"),
    ({"stop": [""]}, "stop", "invalid_parameter"),
    ({"stop": "x" * 513}, "stop", "invalid_parameter"),
    ({"stop": ["s"] * 17}, "stop", "too_many_inputs"),
    ({"stop": [1]}, "stop", "invalid_parameter"),
    ({"stop_token_ids": [-1]}, "stop_token_ids", "invalid_parameter"),
    ({"stop_token_ids": [2**31]}, "stop_token_ids", "invalid_parameter"),
    ({"stop_token_ids": list(range(1025))}, "stop_token_ids", "too_many_inputs"),
    ({"logit_bias": {"-1": 1}}, "logit_bias", "invalid_parameter"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "invalid_parameter"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "invalid_parameter"),
    ({"logit_bias": {str(i): 0 for i in range(1025)}}, "logit_bias", "too_many_inputs"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens", "invalid_parameter"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_parameter"),
    ({"temperature": "hot"}, "temperature", "invalid_parameter"),
    ({"stream": 2}, "stream", "invalid_parameter"),  # 0 and 1 are read as flags (lax)
]


@pytest.mark.parametrize(("body", "param", "code"), SAMPLING_CASES)
def test_completion_sampling_rules(body: dict[str, Any], param: str, code: str) -> None:
    err = completion_error(body)
    assert (err.param, err.code) == (param, code), err.message


@pytest.mark.parametrize(("body", "param", "code"), SAMPLING_CASES)
def test_chat_sampling_rules(body: dict[str, Any], param: str, code: str) -> None:
    err = chat_error(body)
    assert (err.param, err.code) == (param, code), err.message


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"logprobs": -1}, "logprobs", "invalid_parameter"),
        ({"logprobs": 21}, "logprobs", "invalid_parameter"),
        ({"prompt_logprobs": 21}, "prompt_logprobs", "invalid_parameter"),
        # true and "1" are read as 1 (vLLM's lax numbers); these are not numbers
        ({"prompt_logprobs": "one"}, "prompt_logprobs", "invalid_parameter"),
        ({"prompt_logprobs": 1.5}, "prompt_logprobs", "invalid_parameter"),
        ({"best_of": 1, "n": 2}, "best_of", "invalid_parameter"),
        ({"best_of": 129}, "best_of", "invalid_parameter"),
        ({"prompt": None}, "prompt", "missing_parameter"),
        ({"prompt": ""}, "prompt", "missing_parameter"),
        ({"prompt": []}, "prompt", "missing_parameter"),
        ({"prompt": None, "prompt_embeds": []}, "prompt", "missing_parameter"),
        ({"prompt": [[]]}, "prompt", "empty_prompt"),
        ({"prompt": [1, -1]}, "prompt", "invalid_parameter"),
        ({"prompt": [[1], [2**31]]}, "prompt", "invalid_parameter"),
        ({"prompt": [1, "a"]}, "prompt", "invalid_parameter"),
        ({"prompt": ["a", 1]}, "prompt", "invalid_parameter"),
        ({"prompt": [True]}, "prompt", "invalid_parameter"),
        ({"prompt": [1.5]}, "prompt", "invalid_parameter"),
        ({"prompt": {"a": 1}}, "prompt", "invalid_parameter"),
        ({"prompt": ["p"] * 1025}, "prompt", "too_many_inputs"),
        ({"prompt_embeds": ["QQ=="] * 1025}, "prompt_embeds", "too_many_inputs"),
        ({"prompt_embeds": 5}, "prompt_embeds", "invalid_parameter"),
        ({"prompt_embeds": [["QQ=="]]}, "prompt_embeds", "invalid_parameter"),
        (
            {"prompt_embeds": {"dtype": "float16", "shape": [1]}},
            "prompt_embeds",
            "missing_parameter",
        ),
        (
            {"prompt_embeds": {"data": "", "dtype": "float16", "shape": [1]}},
            "prompt_embeds",
            "missing_parameter",
        ),
        (
            {"prompt_embeds": {"data": 1, "dtype": "float16", "shape": [1]}},
            "prompt_embeds",
            "invalid_parameter",
        ),
        ({"prompt_embeds": {"data": "QQ==", "shape": [1]}}, "prompt_embeds", "missing_parameter"),
        (
            {"prompt_embeds": {"data": "QQ==", "dtype": 16, "shape": [1]}},
            "prompt_embeds",
            "invalid_parameter",
        ),
        (
            {"prompt_embeds": {"data": "QQ==", "dtype": "float16"}},
            "prompt_embeds",
            "missing_parameter",
        ),
        (
            {"prompt_embeds": {"data": "QQ==", "dtype": "float16", "shape": "1"}},
            "prompt_embeds",
            "invalid_parameter",
        ),
        (
            {"prompt_embeds": {"data": "QQ==", "dtype": "float16", "shape": [True]}},
            "prompt_embeds",
            "invalid_parameter",
        ),
        ({"prompt": ["p"] * 64, "n": 128}, "n", "too_many_inputs"),
    ],
)
def test_completion_rules(body: dict[str, Any], param: str, code: str) -> None:
    err = completion_error(body)
    assert (err.param, err.code) == (param, code), err.message


def test_vllm_wording_for_empty_prompt_and_embeds_count() -> None:
    err = completion_error({"prompt": None})
    assert err.message == "Either prompt or prompt_embeds must be provided and non-empty."
    err = completion_error({"prompt_embeds": ["QQ=="] * 1025})
    assert err.message == (
        "prompt_embeds list length 1025 exceeds the maximum allowed count of 1024."
    )


def test_type_errors_name_the_path() -> None:
    err = completion_error({"prompt": [[1], [2, "x"]]})
    assert err.message == "Expected `int`, got `str` - at `$.prompt[1][1]`"
    err = completion_error(
        {"prompt_embeds": ["QQ==", {"data": "QQ==", "dtype": "float16", "shape": [1, None]}]}
    )
    assert err.message == "Expected `int`, got `null` - at `$.prompt_embeds[1].shape[1]`"
    err = completion_error({"n": "two"})
    assert err.message == "Expected `int`, got `str` - at `$.n`"


def test_limits_are_configurable() -> None:
    limits = RequestLimits(max_n=4, max_prompts=2)
    assert completion_error({"n": 5}, limits).param == "n"
    assert completion_error({"prompt": ["a", "b", "c"]}, limits).code == "too_many_inputs"
    body = json.dumps({"prompt": "x", "n": 4}).encode()
    assert decode_completion_request(body, "json", limits=limits).n == 4
    with pytest.raises(ValueError, match="max_n"):
        RequestLimits(max_n=0)


def test_boundary_values_are_accepted() -> None:
    body = {
        "prompt": [0, 2**31 - 1],
        "n": 128,
        "temperature": 0,
        "top_p": 1,
        "top_k": -1,
        "min_p": 1,
        "presence_penalty": -2,
        "frequency_penalty": 2,
        "seed": 2**63 - 1,
        "max_tokens": 2**20,
        "min_tokens": 2**20,
        "logprobs": 20,
        "prompt_logprobs": 0,
        "stop": ["s" * 512] * 16,
        "logit_bias": {"0": -100, "5": 100},
        "response_format": {"type": "text"},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = decode_completion_request(json.dumps(body).encode(), "json")
    assert req.prompt == [[0, 2**31 - 1]]
    assert req.logit_bias == {0: -100.0, 5: 100.0}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    "name", ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty"]
)
def test_msgpack_non_finite_numbers(name: str, value: float) -> None:
    body = msgspec.msgpack.encode({"prompt": "x", name: value})
    with pytest.raises(InvalidRequestError) as info:
        decode_completion_request(body, "msgpack")
    assert (info.value.param, info.value.code) == (name, "invalid_number")


def test_msgpack_non_finite_logit_bias() -> None:
    body = msgspec.msgpack.encode({"prompt": "x", "logit_bias": {5: float("nan")}})
    with pytest.raises(InvalidRequestError) as info:
        decode_completion_request(body, "msgpack")
    assert (info.value.param, info.value.code) == ("logit_bias", "invalid_number")


def part(**fields: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [fields]}]


CHAT_CASES = [
    ({"messages": []}, "messages", "invalid_parameter"),
    ({"messages": None}, "messages", "invalid_parameter"),
    ({"messages": "hi"}, "messages", "invalid_parameter"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages", "invalid_parameter"),
    ({"messages": [{"content": "x"}]}, "messages", "missing_parameter"),
    ({"messages": [{"role": "user"}]}, "messages", "invalid_parameter"),
    ({"messages": [{"role": "system", "content": None}]}, "messages", "invalid_parameter"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages", "invalid_parameter"),
    (
        {"messages": [{"role": "user", "content": {"type": "text"}}]},
        "messages",
        "invalid_parameter",
    ),
    ({"messages": [{"role": "user", "content": ["text"]}]}, "messages", "invalid_parameter"),
    ({"messages": part(type="image_url", image_url={"url": "x"})}, "messages", "invalid_parameter"),
    ({"messages": part(text="no type")}, "messages", "invalid_parameter"),
    ({"messages": part(type="text")}, "messages", "missing_parameter"),
    ({"messages": part(type="text", text=3)}, "messages", "invalid_parameter"),
    ({"messages": part(type="prompt_embeds")}, "prompt_embeds", "missing_parameter"),
    ({"messages": part(type="prompt_embeds", data="")}, "prompt_embeds", "missing_parameter"),
    ({"messages": part(type="prompt_embeds", data=None)}, "prompt_embeds", "missing_parameter"),
    ({"messages": part(type="prompt_embeds", data=[1])}, "prompt_embeds", "invalid_parameter"),
    (
        {"messages": part(type="prompt_embeds", data="QQ==", dtype="float16")},
        "messages",
        "invalid_parameter",
    ),
    (
        {"messages": part(type="prompt_embeds", data="QQ==", shape=[1])},
        "messages",
        "invalid_parameter",
    ),
    (
        {"messages": part(type="prompt_embeds", data="QQ==", dtype=1, shape=[1])},
        "messages",
        "invalid_parameter",
    ),
    (
        {"messages": part(type="prompt_embeds", data="QQ==", dtype="float16", shape=["a"])},
        "messages",
        "invalid_parameter",
    ),
    ({"messages": [{"role": "user", "content": "x"}] * 4097}, "messages", "too_many_inputs"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 1025}]},
        "messages",
        "too_many_inputs",
    ),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "invalid_parameter"),
    (
        {"max_completion_tokens": 3, "max_tokens": 100, "min_tokens": 4},
        "min_tokens",
        "invalid_parameter",
    ),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "invalid_parameter"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_parameter"),
    ({"logprobs": 2}, "logprobs", "invalid_parameter"),  # 0 and 1 are flags (lax)
    ({"continue_final_message": True}, "continue_final_message", "invalid_parameter"),
    ({"chat_template_kwargs": [1]}, "chat_template_kwargs", "invalid_parameter"),
]


@pytest.mark.parametrize(("body", "param", "code"), CHAT_CASES)
def test_chat_rules(body: dict[str, Any], param: str, code: str) -> None:
    err = chat_error(body)
    assert (err.param, err.code) == (param, code), err.message


def test_chat_vllm_wording() -> None:
    assert chat_error({"messages": part(type="prompt_embeds")}).message == (
        "prompt_embeds content part requires a non-empty `data` field with base64-encoded "
        "tensor bytes."
    )
    assert chat_error({"top_logprobs": 2}).message == (
        "when using `top_logprobs`, `logprobs` must be set to true."
    )
    assert chat_error({"continue_final_message": True}).message == (
        "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    )


def test_chat_accepted_edge_cases() -> None:
    body = {
        "messages": [
            {"role": "user", "content": []},
            {"role": "assistant", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "a"}] * 1024},
        ],
        "top_logprobs": 0,
        "continue_final_message": True,
        "add_generation_prompt": False,
        "tool_choice": "auto",
        "tools": [],
    }
    req = decode_chat_request(json.dumps(body).encode(), "json")
    assert req.messages[0].content == []
    assert req.continue_final_message


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "prompt", "invalid_parameter"),
        ({"prompt": "x", "messages": USER}, "prompt", "invalid_parameter"),
        ({"messages": []}, "messages", "invalid_parameter"),
        (
            {"messages": USER, "continue_final_message": True},
            "continue_final_message",
            "invalid_parameter",
        ),
        ({"prompt": 5}, "prompt", "invalid_parameter"),
    ],
)
def test_tokenize_rules(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_tokenize_request(json.dumps(body).encode(), "json")
    assert (info.value.param, info.value.code) == (param, code), info.value.message


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "tokens", "missing_parameter"),
        ({"tokens": [-1]}, "tokens", "invalid_parameter"),
        ({"tokens": ["a"]}, "tokens", "invalid_parameter"),
    ],
)
def test_detokenize_rules(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_detokenize_request(json.dumps(body).encode(), "json")
    assert (info.value.param, info.value.code) == (param, code), info.value.message


def test_detokenize_count_limit() -> None:
    body = json.dumps({"tokens": [1, 2, 3]}).encode()
    with pytest.raises(InvalidRequestError) as info:
        decode_detokenize_request(body, "json", limits=RequestLimits(max_detokenize_tokens=2))
    assert (info.value.param, info.value.code) == ("tokens", "too_many_inputs")


# ---- sequences per request: prompts x max(n, best_of) --------------------------------------

SEQS = RequestLimits(max_seqs_per_request=8)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["a", "b", "c"], "n": 3}, "n"),
        ({"prompt": ["a", "b"], "n": 2, "best_of": 5}, "best_of"),
        ({"prompt": "a", "prompt_embeds": ["QQ==", "QQ=="], "n": 3}, "n"),
        ({"prompt": "a", "prompt_embeds": ["QQ==", "QQ=="], "best_of": 3}, "best_of"),
        # both over: n is the field to lower first
        ({"prompt": ["a", "b", "c"], "n": 3, "best_of": 4}, "n"),
    ],
)
def test_sequences_per_request_bound(body: dict[str, Any], param: str) -> None:
    err = completion_error(body, SEQS)
    assert (err.param, err.code) == (param, "too_many_inputs"), err.message
    assert "the maximum is 8" in err.message


def test_best_of_cannot_sidestep_the_default_bound() -> None:
    """1024 prompts x best_of 128 would run 131,072 sequences."""
    err = completion_error({"prompt": ["p"] * 1024, "best_of": 128})
    assert (err.param, err.code) == ("best_of", "too_many_inputs")
    assert "131072 sequences" in err.message and "4096" in err.message


def test_sequences_at_the_bound_are_accepted() -> None:
    body = json.dumps({"prompt": ["a", "b"], "n": 2, "best_of": 4}).encode()
    assert decode_completion_request(body, "json", limits=SEQS).best_of == 4


def test_chat_sequences_bound_names_n() -> None:
    body = json.dumps({"messages": USER, "n": 9}).encode()
    with pytest.raises(InvalidRequestError) as info:
        decode_chat_request(body, "json", limits=SEQS)
    assert (info.value.param, info.value.code) == ("n", "too_many_inputs")
    body = json.dumps({"messages": USER, "n": 8}).encode()
    assert decode_chat_request(body, "json", limits=SEQS).n == 8


# ---- characters of text prompts, before any tokenizer ---------------------------------------

CHARS = RequestLimits(max_prompt_chars=10, max_total_prompt_chars=25)


@pytest.mark.parametrize(
    "prompt",
    [
        "x" * 11,
        ["short", "x" * 11],
        ["x" * 10, "x" * 10, "x" * 6],  # each fits, the total does not
    ],
)
def test_completion_prompt_chars(prompt: Any) -> None:
    err = completion_error({"prompt": prompt}, CHARS)
    assert (err.param, err.code) == ("prompt", "prompt_too_long"), err.message


def test_completion_prompt_chars_at_the_bounds_and_token_ids() -> None:
    for prompt in ("x" * 10, ["x" * 10, "x" * 10, "x" * 5], [[1] * 100]):
        body = json.dumps({"prompt": prompt}).encode()
        assert decode_completion_request(body, "json", limits=CHARS).prompt


def test_prompt_chars_message_names_sizes() -> None:
    err = completion_error({"prompt": "x" * 11}, CHARS)
    assert err.message == "`prompt` holds a text prompt of 11 characters; the maximum is 10."
    err = completion_error({"prompt": ["x" * 10] * 3}, CHARS)
    assert err.message == (
        "The text prompts in `prompt` hold 30 characters in total; the maximum is 25."
    )


def text_parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text} for text in texts]


TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "x" * 8}}


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "x" * 11}],
        [{"role": "user", "content": "x" * 6}, {"role": "assistant", "content": "y" * 5}],
        [{"role": "user", "content": text_parts("x" * 6, "y" * 5)}],
        [
            {"role": "user", "content": text_parts("x" * 5)},
            {
                "role": "user",
                "content": [{"type": "prompt_embeds", "data": "QQ=="}],
                "name": "n" * 6,
            },
        ],
        [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [TOOL_CALL]}],
        [{"role": "tool", "content": "x" * 5, "tool_call_id": "i" * 6}],
    ],
)
def test_chat_message_chars_count_across_messages(messages: list[dict[str, Any]]) -> None:
    raw = json.dumps({"messages": messages}).encode()
    for decode in (decode_chat_request, decode_tokenize_request):
        with pytest.raises(InvalidRequestError) as info:
            decode(raw, "json", limits=CHARS)
        assert (info.value.param, info.value.code) == ("messages", "prompt_too_long")


def test_chat_message_chars_at_the_bound() -> None:
    messages = [
        {"role": "user", "content": text_parts("x" * 5)},
        {"role": "user", "content": "y" * 5},
    ]
    req = decode_chat_request(json.dumps({"messages": messages}).encode(), "json", limits=CHARS)
    assert len(req.messages) == 2


def test_tokenize_prompt_chars() -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_tokenize_request(json.dumps({"prompt": "x" * 11}).encode(), "json", limits=CHARS)
    assert (info.value.param, info.value.code) == ("prompt", "prompt_too_long")
    req = decode_tokenize_request(json.dumps({"prompt": "x" * 10}).encode(), "json", limits=CHARS)
    assert req.prompt == "x" * 10


# ---- `prompt: ""` with embeds (vLLM's docs example) -----------------------------------------


@pytest.mark.parametrize("prompt", ["", [""], ["", ""], None])
def test_empty_text_with_embeds_is_no_text_prompt(prompt: Any) -> None:
    body = json.dumps({"prompt": prompt, "prompt_embeds": "QQ=="}).encode()
    req = decode_completion_request(body, "json")
    assert req.prompt is None
    assert req.prompt_embeds == ["QQ=="]


@pytest.mark.parametrize("prompt", [["", "a"], "a", [[1, 2]]])
def test_other_text_with_embeds_is_an_extra_prompt(prompt: Any) -> None:
    body = json.dumps({"prompt": prompt, "prompt_embeds": ["QQ=="]}).encode()
    assert decode_completion_request(body, "json").prompt


@pytest.mark.parametrize("embeds", [None, []])
def test_empty_text_without_embeds_is_still_missing(embeds: Any) -> None:
    err = completion_error({"prompt": "", "prompt_embeds": embeds})
    assert (err.param, err.code) == ("prompt", "missing_parameter")


def test_an_empty_payload_is_a_payload() -> None:
    """vLLM counts only None and [] as no prompt_embeds; "" fails to load (in the codec)."""
    body = json.dumps({"prompt": "", "prompt_embeds": ""}).encode()
    assert decode_completion_request(body, "json").prompt_embeds == [""]
