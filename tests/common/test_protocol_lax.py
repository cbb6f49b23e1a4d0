"""vLLM's lax scalars (pydantic's lax mode), field by field, in JSON and msgpack bodies; every
other field keeps its strict type error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from pe_common.errors import InvalidRequestError
from pe_common.protocol import (
    RawEmbeds,
    decode_chat_request,
    decode_completion_request,
    decode_detokenize_request,
    decode_tokenize_request,
)
from pe_common.protocol.chat import ChatCompletionRequestBody
from pe_common.protocol.completion import CompletionRequestBody
from pe_common.protocol.lax import LaxFields, lax_bool, lax_float, lax_int
from pe_common.protocol.tokenize import TokenizeRequestBody

USER = [{"role": "user", "content": "hi"}]
KINDS = ["json", "msgpack"]

ENDPOINTS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "completions": (decode_completion_request, {"prompt": "x"}),
    "chat": (decode_chat_request, {"messages": USER}),
    "tokenize": (decode_tokenize_request, {"prompt": "x"}),
}
SAMPLING_FLOATS = [
    "frequency_penalty", "presence_penalty", "temperature", "top_p", "min_p", "repetition_penalty",
]  # fmt: skip
SHARED_INTS = [
    "max_tokens", "n", "seed", "top_k", "min_tokens", "prompt_logprobs", "truncate_prompt_tokens",
]  # fmt: skip
SHARED_BOOLS = [
    "stream", "ignore_eos", "skip_special_tokens", "include_stop_str_in_output",
    "return_token_ids", "echo", "add_special_tokens",
]  # fmt: skip
# (endpoint, kind) -> the fields read laxly; stream_options' flags by their dotted path
LAX_FIELDS: dict[tuple[str, type], list[str]] = {
    ("completions", int): [*SHARED_INTS, "best_of", "logprobs"],
    ("completions", float): SAMPLING_FLOATS,
    ("completions", bool): [
        *SHARED_BOOLS, "stream_options.include_usage", "stream_options.continuous_usage_stats",
    ],
    ("chat", int): [*SHARED_INTS, "top_logprobs", "max_completion_tokens"],
    ("chat", float): SAMPLING_FLOATS,
    ("chat", bool): [
        *SHARED_BOOLS, "logprobs", "add_generation_prompt", "continue_final_message",
        "parallel_tool_calls", "stream_options.include_usage", "stream_options.continuous_usage_stats",
    ],
    ("tokenize", bool): [
        "add_special_tokens", "add_generation_prompt", "continue_final_message",
        "return_token_strs",
    ],
}  # fmt: skip
# What a field needs beside it to pass the other rules
CONTEXT: dict[str, dict[str, Any]] = {
    "top_logprobs": {"logprobs": True},
    "continue_final_message": {"add_generation_prompt": False},
    "stream_options.include_usage": {"stream": True},
    "stream_options.continuous_usage_stats": {"stream": True},
}
# wire value -> what pe reads, per field type
SPELLINGS: dict[type, list[tuple[Any, Any]]] = {
    int: [(True, 1), (1.0, 1), ("1", 1), (" +1\n", 1), ("1.00", 1), ("0_1", 1)],
    float: [(True, 1.0), ("0.5", 0.5), (" 5e-1 ", 0.5), (".5", 0.5), ("1", 1.0)],
    bool: [
        (1, True), (0, False), (1.0, True), (0.0, False), ("1", True), ("0", False),
        ("true", True), ("False", False), ("YES", True), ("no", False), ("On", True),
        ("off", False), ("t", True), ("F", False), ("y", True), ("n", False),
    ],
}  # fmt: skip


def encode(body: dict[str, Any], kind: str) -> bytes:
    return json.dumps(body).encode() if kind == "json" else msgspec.msgpack.encode(body)


def with_field(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = {**body, **CONTEXT.get(path, {})}
    if path.startswith("stream_options."):
        body["stream_options"] = {path.split(".", 1)[1]: value}
    else:
        body[path] = value
    return body


def read_field(req: Any, path: str) -> Any:
    for name in path.split("."):
        req = getattr(req, name)
    return req


def decode(endpoint: str, body: dict[str, Any], kind: str) -> Any:
    decoder, base = ENDPOINTS[endpoint]
    return decoder(encode({**base, **body}, kind), kind)


def decode_error(endpoint: str, body: dict[str, Any], kind: str = "json") -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        decode(endpoint, body, kind)
    return info.value


LAX_CASES = [
    pytest.param(endpoint, path, wire, read, id=f"{endpoint}-{path}-{wire!r}")
    for (endpoint, field_type), paths in LAX_FIELDS.items()
    for path in paths
    for wire, read in SPELLINGS[field_type]
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("endpoint", "path", "wire", "read"), LAX_CASES)
def test_lax_scalars_read_as_vllm_reads_them(
    endpoint: str, path: str, wire: Any, read: Any, kind: str
) -> None:
    req = decode(endpoint, with_field({}, path, wire), kind)
    value = read_field(req, path)
    assert value == read and type(value) is type(read)


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("completions", CompletionRequestBody),
        ("chat", ChatCompletionRequestBody),
        ("tokenize", TokenizeRequestBody),
    ],
)
def test_the_table_lists_every_lax_field(endpoint: str, body: type[msgspec.Struct]) -> None:
    lax = LaxFields(body)
    found = set(lax.scalars) | {
        f"{outer}.{inner}" for outer, fields in lax.nested.items() for inner in fields.scalars
    }
    listed = {p for (e, _), paths in LAX_FIELDS.items() if e == endpoint for p in paths}
    assert found == listed


STRICT_SCALARS: list[tuple[str, Any]] = [
    # ints: fractions, exponents, other bases, other digits, words, empty, long strings
    ("n", 1.5), ("n", "1.5"), ("n", "1e2"), ("n", "0x10"), ("n", "\u0661"), ("n", "one"),
    ("n", ""), ("n", " "), ("n", "1" * 65), ("n", "_1"), ("n", "1."), ("n", None),
    ("n", [1]), ("n", {"value": 1}), ("max_tokens", "null"), ("seed", "nan"),
    ("prompt_logprobs", "true"),
    # floats
    ("temperature", "hot"), ("temperature", ""), ("temperature", "0x1p-1"),
    ("temperature", "\u0661"), ("temperature", "0." + "5" * 70), ("temperature", [0.5]),
    ("temperature", "null"),
    # bools: numbers other than 0 and 1, other words, padded words
    ("echo", 2), ("echo", -1), ("echo", 0.5), ("echo", "2"), ("echo", "yes "), ("echo", ""),
    ("echo", "maybe"), ("echo", "null"), ("echo", None), ("echo", [True]),
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("field", "wire"), STRICT_SCALARS, ids=repr)
def test_values_pydantic_refuses_stay_type_errors(field: str, wire: Any, kind: str) -> None:
    err = decode_error("completions", {field: wire}, kind)
    assert err.param == field and err.code == "invalid_parameter"
    assert err.message.startswith("Expected `") and err.message.endswith(f"- at `$.{field}`")


def test_bytes_are_not_numbers_in_msgpack() -> None:
    err = decode_error("completions", {"max_tokens": b"5"}, "msgpack")
    assert err.message == "Expected `int | null`, got `bytes` - at `$.max_tokens`"


STRICT_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    # strings and enums never take numbers or flags
    ("completions", {"model": 5}, "model"),
    ("completions", {"user": True}, "user"),
    ("completions", {"suffix": 1}, "suffix"),
    ("completions", {"cache_salt": 1}, "cache_salt"),
    ("completions", {"stop": 5}, "stop"),
    ("completions", {"stop": ["a", 1]}, "stop"),
    ("chat", {"tool_choice": 1}, "tool_choice"),
    ("chat", {"chat_template": True}, "chat_template"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "messages"),
    ("chat", {"messages": [{"role": 1, "content": "hi"}]}, "messages"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages"),
    # prompts, token ids and logit_bias hold data, not knobs
    ("completions", {"prompt": 5}, "prompt"),
    ("completions", {"prompt": True}, "prompt"),
    ("completions", {"prompt": [True, 1]}, "prompt"),
    ("completions", {"prompt": [1, "2"]}, "prompt"),
    ("completions", {"prompt": [[1, True]]}, "prompt"),
    ("completions", {"stop_token_ids": ["1"]}, "stop_token_ids"),
    ("completions", {"stop_token_ids": [True]}, "stop_token_ids"),
    ("completions", {"logit_bias": {"1": "0.5"}}, "logit_bias"),
    ("completions", {"logit_bias": {"1": True}}, "logit_bias"),
    ("completions", {"stream_options": {"include_usage": 2}, "stream": True}, "stream_options"),
    # tensor payloads and their metadata
    ("completions", {"prompt_embeds": 5}, "prompt_embeds"),
    ("completions", {"prompt_embeds": True}, "prompt_embeds"),
    ("completions", {"prompt_embeds": {"data": 5, "dtype": "float32", "shape": [1, 2]}},
     "prompt_embeds"),
    ("completions", {"prompt_embeds": {"data": "QQ==", "dtype": 1, "shape": [1, 2]}},
     "prompt_embeds"),
    ("completions", {"prompt_embeds": {"data": "QQ==", "dtype": "float32", "shape": ["1", 2]}},
     "prompt_embeds"),
    ("completions", {"prompt_embeds": {"data": "QQ==", "dtype": "float32", "shape": [True, 2]}},
     "prompt_embeds"),
    ("chat", {"messages": [{"role": "user", "content": [
        {"type": "prompt_embeds", "data": "QQ==", "dtype": "float32", "shape": [1.0, 2]},
    ]}]}, "messages"),
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("endpoint", "body", "param"), STRICT_FIELDS, ids=repr)
def test_other_fields_stay_strict_beside_a_lax_one(
    endpoint: str, body: dict[str, Any], param: str, kind: str
) -> None:
    # A lax value elsewhere sends the body down the lax path; the strict error still wins.
    plain = decode_error(endpoint, body, kind)
    beside = decode_error(endpoint, {**body, "n": "1"}, kind)
    assert plain.param == beside.param == param
    assert plain.message == beside.message and plain.code == beside.code


def test_detokenize_token_ids_stay_strict() -> None:
    for tokens in (["1"], [True], "1", [1.0]):
        with pytest.raises(InvalidRequestError) as info:
            decode_detokenize_request(json.dumps({"tokens": tokens}).encode(), "json")
        assert info.value.param == "tokens"


@pytest.mark.parametrize(
    ("field", "lax", "strict"),
    [
        ("n", "0", 0),
        ("n", False, 0),
        ("n", "129", 129),
        ("max_tokens", "0", 0),
        ("temperature", "-1", -1),
        ("temperature", "nan", float("nan")),
        ("top_p", "inf", float("inf")),
        ("prompt_logprobs", "21", 21),
        ("seed", str(2**63), 2**63),
    ],
)
def test_range_checks_run_after_coercion(field: str, lax: Any, strict: Any) -> None:
    lax_err = decode_error("completions", {field: lax}, "msgpack")
    strict_err = decode_error("completions", {field: strict}, "msgpack")
    assert (lax_err.message, lax_err.param, lax_err.code) == (
        strict_err.message,
        strict_err.param,
        strict_err.code,
    )


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("field", SAMPLING_FLOATS)
def test_non_finite_number_strings_meet_the_finite_checks(endpoint: str, field: str) -> None:
    # JSON has no NaN literal, so "nan" / "-Infinity" are new ways to send one
    for wire in ("nan", "-Infinity", "inf"):
        err = decode_error(endpoint, {field: wire})
        assert (err.param, err.code) == (field, "invalid_number")


def test_the_first_refused_field_is_named_after_lax_ones() -> None:
    err = decode_error("completions", {"n": "2", "max_tokens": "five", "temperature": "0"})
    assert err.param == "max_tokens"
    assert err.message == "Expected `int | null`, got `str` - at `$.max_tokens`"
    assert "five" not in err.message


def test_a_body_without_lax_values_keeps_its_strict_error() -> None:
    err = decode_error("chat", {"messages": USER, "n": "two"})
    assert err.message == "Expected `int`, got `str` - at `$.n`"
    with pytest.raises(InvalidRequestError) as info:
        decode_chat_request(b'{"n": "1"}', "json")
    assert info.value.code == "missing_parameter" and info.value.param == "messages"


@pytest.mark.parametrize("kind", KINDS)
def test_the_lax_path_keeps_every_other_field(kind: str) -> None:
    logit_bias: dict[Any, float] = {"7": 1.5} if kind == "json" else {7: 1.5}
    payload: Any = b"\x93NUMPY raw bytes" if kind == "msgpack" else "QQ=="
    body = {
        "prompt": [[1, 2], [3]],
        "prompt_embeds": [{"data": payload, "dtype": "float16", "shape": [1, 4]}],
        "stop": "end",
        "logit_bias": logit_bias,
        "stop_token_ids": [5],
        "stream": "true",
        "stream_options": {"include_usage": "false"},
        "max_tokens": "3",
        "user": "u",
        "unknown": {"kept": "out"},
    }
    req = decode("completions", body, kind)
    assert req.prompt == [[1, 2], [3]]
    assert req.prompt_embeds == [RawEmbeds(data=payload, dtype="float16", shape=[1, 4])]
    assert req.stop == ["end"] and req.logit_bias == {7: 1.5} and req.stop_token_ids == [5]
    assert req.stream is True and req.stream_options.include_usage is False
    assert req.max_tokens == 3 and req.user == "u"


def test_false_is_zero_for_numbers() -> None:
    req = decode("completions", {"logprobs": False, "seed": False, "temperature": False}, "json")
    assert (req.logprobs, req.seed, req.temperature) == (0, 0, 0.0)
    assert type(req.logprobs) is int and type(req.temperature) is float


def test_prompt_logprobs_true_is_one() -> None:
    """vLLM's own test sends ``prompt_logprobs: true`` (with embeds) and expects its
    "not compatible" 400, so vLLM reads it as 1; pe reads it the same way."""
    req = decode("completions", {"prompt_embeds": "QQ==", "prompt_logprobs": True}, "json")
    assert req.prompt_logprobs == 1 and type(req.prompt_logprobs) is int


@pytest.mark.parametrize(
    ("coerce", "value"),
    [
        (lax_int, 5), (lax_int, "5.5"), (lax_int, None), (lax_int, float("inf")),
        (lax_float, 0.5), (lax_float, "x"), (lax_float, None), (lax_float, b"0.5"),
        (lax_bool, True), (lax_bool, 2), (lax_bool, "truth"), (lax_bool, None),
    ],
)  # fmt: skip
def test_values_the_coercions_leave_alone(coerce: Callable[[Any], Any], value: Any) -> None:
    assert coerce(value) is value
