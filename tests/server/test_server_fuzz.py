"""Schema fuzzing of /v1/completions and /v1/chat/completions against the live server
(reference/security.md §12.1): never a 5xx, never a hang, always the OpenAI error envelope.

Bodies are drawn from the request Structs themselves (msgspec.inspect of the wire types): each
field gets either a value of its declared type, stretched to out-of-range numbers, or any JSON
value of the wrong type; prompts, prompt_embeds and chat content parts get their own strategies
(valid tensors, raw metadata with random dtype/shape, random base64, random part dicts). The
default run is bounded (FUZZ_EXAMPLES per endpoint); the `slow` variant runs many more.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from server_harness import ERROR_TYPES, INTERNALS, MODEL, ServerProcess, wait_until

from conftest import module_server
from pe_common.codec import encode_prompt_embeds
from pe_common.protocol.chat import ChatCompletionRequestBody
from pe_common.protocol.completion import CompletionRequestBody

FUZZ_EXAMPLES = 150
SLOW_FUZZ_EXAMPLES = 2000
# A hang is a failure: no single request may take longer than this (reads included).
REQUEST_TIMEOUT_S = 30.0
HIDDEN = 64  # the tiny test model's width
msi = msgspec.inspect

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times in four, else ``odd``."""
    return st.integers(0, 3).flatmap(lambda k: usual if k else odd)


# Mostly in range, sometimes at or far past every bound the server checks.
ints = mostly(
    st.integers(0, 12),
    st.integers(-(2**63), 2**63) | st.sampled_from([-1, 2**31, 2**63 - 1, 10**9, 10**6]),
)
floats = mostly(
    st.floats(0, 2),
    st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([-1.0, 1e308, -1e-308]),
)
texts = st.text(max_size=40)


def from_type(t: msi.Type) -> st.SearchStrategy[Any]:
    """A value of the declared wire type (numbers stretched past their valid ranges)."""
    if isinstance(t, msi.UnionType):
        return st.one_of([from_type(member) for member in t.types])
    if isinstance(t, msi.Metadata):
        return from_type(t.type)
    if isinstance(t, msi.NoneType):
        return st.none()
    if isinstance(t, msi.BoolType):
        return st.booleans()
    if isinstance(t, msi.IntType):
        return ints
    if isinstance(t, msi.FloatType):
        return floats | ints
    if isinstance(t, msi.StrType):
        return texts
    if isinstance(t, msi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, msi.ListType):
        return st.lists(from_type(t.item_type), max_size=5)
    if isinstance(t, msi.DictType):
        keys = st.integers(-5, 10**6).map(str) if isinstance(t.key_type, msi.IntType) else texts
        return st.dictionaries(keys, from_type(t.value_type), max_size=4)
    if isinstance(t, msi.StructType):
        return struct_values(t)
    return json_values


def struct_values(
    t: msi.StructType, special: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with a random subset of the Struct's fields, each well- or ill-typed, plus
    sometimes an unknown field (ignored by the server); ``special`` fields (the prompt, the
    messages) have their own strategies and are present three times in four."""
    special = special or {}
    fields = {f.encode_name: special.get(f.encode_name, from_type(f.type)) for f in t.fields}
    required = {f.encode_name for f in t.fields if f.required}

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        others = sorted(set(fields) - set(special) - required)
        names = set(required)
        if others:
            names |= draw(st.sets(st.sampled_from(others), max_size=4))
        names |= {name for name in special if draw(st.integers(0, 3)) > 0}  # mostly present
        body = {}
        for name in sorted(names):
            wrong = name not in special and draw(st.integers(0, 19)) == 0
            body[name] = draw(json_values if wrong else fields[name])
        if draw(st.integers(0, 9)) == 0:
            body[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        return body

    return build()


# prompt embeddings and chat content ------------------------------------------------------------


def tensor_payloads() -> st.SearchStrategy[Any]:
    rows = st.integers(0, 6)
    width = st.sampled_from([HIDDEN, HIDDEN, HIDDEN - 1, 1])

    @st.composite
    def valid(draw: st.DrawFn) -> Any:
        shape = (draw(rows), draw(width))
        values = draw(st.sampled_from([0.0, 0.5, -1.0, 1e4, float("nan"), float("inf")]))
        array = np.full(shape, values, dtype=np.float32)
        fmt = draw(st.sampled_from(["safetensors", "torch", "raw"]))
        return encode_prompt_embeds(array, fmt)

    @st.composite
    def raw_meta(draw: st.DrawFn) -> dict[str, Any]:
        return {
            "data": draw(random_base64 | texts),
            "dtype": draw(
                st.sampled_from(["float32", "float16", "bfloat16", "int8", "x"]) | json_values
            ),
            "shape": draw(st.lists(ints, max_size=4) | json_values),
        }

    random_base64 = st.binary(max_size=96).map(lambda b: base64.b64encode(b).decode())
    return st.one_of(valid(), raw_meta(), random_base64, texts, json_values)


def content_parts() -> st.SearchStrategy[Any]:
    text_part = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
    embeds_part = tensor_payloads().map(
        lambda p: {"type": "prompt_embeds", **(p if isinstance(p, dict) else {"data": p})}
    )
    odd_part = st.fixed_dictionaries(
        {"type": st.sampled_from(["image_url", "input_audio", "", "text"])},
        optional={"text": json_values},
    )
    return st.one_of(text_part, embeds_part, odd_part, json_values)


def messages() -> st.SearchStrategy[Any]:
    message_type = next(
        f.type for f in msi.type_info(ChatCompletionRequestBody).fields if f.name == "messages"
    )
    assert isinstance(message_type, msi.ListType) and isinstance(
        message_type.item_type, msi.StructType
    )
    content = st.one_of(texts, st.lists(content_parts(), max_size=4), st.none(), json_values)
    message = struct_values(message_type.item_type, {"content": content})
    return st.lists(message, min_size=0, max_size=4) | json_values


model_names = st.sampled_from([MODEL, MODEL, MODEL, "other"]) | texts
prompts = st.one_of(
    texts,
    st.lists(texts, max_size=3),
    st.lists(st.integers(-5, 60000), max_size=8),
    st.lists(st.lists(st.integers(-5, 60000), max_size=5), max_size=3),
    json_values,
)
completion_bodies = struct_values(
    msi.type_info(CompletionRequestBody),
    {
        "model": model_names,
        "prompt": prompts,
        "prompt_embeds": tensor_payloads() | st.lists(tensor_payloads(), max_size=3),
    },
)
chat_bodies = struct_values(
    msi.type_info(ChatCompletionRequestBody), {"model": model_names, "messages": messages()}
)


# Well-formed requests with random in-range parameters, so that a good share of the examples
# reach the engine (sampling, logprobs, streams, stop strings, embeds splicing).
@st.composite
def valid_tensor(draw: st.DrawFn) -> Any:
    rows = np.full((draw(st.integers(1, 6)), HIDDEN), draw(st.floats(-2, 2)), dtype=np.float32)
    return encode_prompt_embeds(rows, draw(st.sampled_from(["safetensors", "torch", "raw"])))


sampling = {
    "max_tokens": st.integers(1, 8),
    "n": st.integers(1, 3),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 20),
    "min_p": st.floats(0, 1),
    "seed": st.integers(0, 2**32),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.5, 2),
    "min_tokens": st.integers(0, 4),
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=2),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(),
    "return_token_ids": st.booleans(),
}
valid_completion_bodies = st.fixed_dictionaries(
    {"model": st.just(MODEL)},
    optional={
        **sampling,
        "prompt": st.text(min_size=1, max_size=30) | st.lists(st.integers(3, 1000), min_size=1),
        "prompt_embeds": valid_tensor() | st.lists(valid_tensor(), min_size=1, max_size=2),
        "logprobs": st.integers(0, 5),
        "echo": st.booleans(),
    },
)
valid_parts = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(min_size=1, max_size=20)})
    | valid_tensor().map(
        lambda p: {"type": "prompt_embeds", **(p if isinstance(p, dict) else {"data": p})}
    ),
    min_size=1,
    max_size=3,
)
valid_chat_bodies = st.fixed_dictionaries(
    {
        "model": st.just(MODEL),
        "max_completion_tokens": st.integers(1, 8),  # chat's default runs to the context end
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant"]),
                    "content": st.text(min_size=1, max_size=30) | valid_parts,
                }
            ),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        **sampling,
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 5),
    },
)


# the check -----------------------------------------------------------------------------------


# A short context and n <= 2, so that no valid request generates for long.
fuzzed = module_server("fuzz", ["--enable-prompt-embeds", "--max-model-len", "64", "--max-n", "2",
                                "--max-logprobs", "5", "--max-embeds-bytes", "64KiB"])  # fmt: skip


@pytest.fixture(scope="module")
def http(fuzzed: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzzed.root, headers=fuzzed.headers, timeout=REQUEST_TIMEOUT_S) as c:
        yield c


def check(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    data = json.dumps(body, allow_nan=False).encode()
    with http.stream("POST", path, content=data, headers={"Content-Type": "application/json"}) as r:
        text = r.read().decode()
    note_event(f"status {r.status_code}")
    assert r.status_code < 500, f"{r.status_code} for {data[:500]!r}: {text[:500]}"
    assert not INTERNALS.search(text), text[:500]
    if r.status_code >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, text
        assert error["type"] == ERROR_TYPES[r.status_code], text
        assert isinstance(error["message"], str) and isinstance(error["code"], str)
        note_event(f"code {error['code']}")
        return
    assert r.status_code == 200
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", text[-300:]
        for event in events[:-1]:
            assert "error" not in json.loads(event), event
    else:
        assert json.loads(text)["choices"], text[:300]


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(body=completion_bodies | valid_completion_bodies)
def test_fuzz_completions(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http, "/v1/completions", body)


@FUZZ
@given(body=chat_bodies | valid_chat_bodies)
def test_fuzz_chat(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http, "/v1/chat/completions", body)


@pytest.mark.slow
@settings(FUZZ, max_examples=SLOW_FUZZ_EXAMPLES)
@given(completion=completion_bodies | valid_completion_bodies, chat=chat_bodies | valid_chat_bodies)
def test_fuzz_both_long(
    http: httpx.Client, completion: dict[str, Any], chat: dict[str, Any]
) -> None:
    check(http, "/v1/completions", completion)
    check(http, "/v1/chat/completions", chat)


def test_server_healthy_after_fuzzing(fuzzed: ServerProcess) -> None:
    assert fuzzed.get("/health").status_code == 200
    assert wait_until(fuzzed.is_idle, 2.0)
