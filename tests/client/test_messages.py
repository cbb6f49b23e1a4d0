"""Message builders and the openai-package helpers: plain OpenAI-shaped, JSON-ready dicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pe_client import RawTensor
from pe_client.messages import assistant, message, prompt_embeds_part, system, text_part, user
from pe_client.openai_compat import chat_part, completion_extra_body, default_format
from pe_common.codec import decode_prompt_embeds_numpy


def embeds(rows: int = 2, hidden: int = 4) -> np.ndarray:
    return np.arange(rows * hidden, dtype=np.float32).reshape(rows, hidden) / 10


def decode(payload: object, hidden: int = 4) -> np.ndarray:
    return decode_prompt_embeds_numpy(payload, hidden_size=hidden)  # type: ignore[arg-type]


def test_single_string_is_plain_content() -> None:
    assert user("hi") == {"role": "user", "content": "hi"}
    assert system("be brief") == {"role": "system", "content": "be brief"}
    assert assistant("ok", name="bot") == {"role": "assistant", "content": "ok", "name": "bot"}


def test_mixed_content_keeps_order() -> None:
    x = embeds()
    msg = user("Summarise:", x, "in one line")
    assert msg["role"] == "user"
    parts = msg["content"]
    assert [p["type"] for p in parts] == ["text", "prompt_embeds", "text"]
    assert parts[0] == {"type": "text", "text": "Summarise:"}
    assert parts[2] == {"type": "text", "text": "in one line"}
    np.testing.assert_array_equal(decode(parts[1]["data"]), x)
    json.dumps(msg)  # plain JSON: sendable by the official openai client


def test_embeds_only_and_several_tensors() -> None:
    a, b = embeds(2), embeds(3)
    parts = system(a, b)["content"]
    assert [decode(p["data"]).shape[0] for p in parts] == [2, 3]


def test_raw_format_adds_dtype_and_shape() -> None:
    part = prompt_embeds_part(embeds(), format="raw")
    assert part["type"] == "prompt_embeds"
    assert part["dtype"] == "float32" and part["shape"] == [2, 4]
    assert isinstance(part["data"], str)
    np.testing.assert_array_equal(decode(part), embeds())


def test_bfloat16_raw_tensor_part() -> None:
    part = prompt_embeds_part(RawTensor.bfloat16(embeds()), format="raw")
    assert part["dtype"] == "bfloat16"
    np.testing.assert_allclose(decode(part), embeds(), rtol=1e-2)


def test_prebuilt_parts_and_encoded_payloads_pass_through() -> None:
    ready = prompt_embeds_part(embeds())
    spec = prompt_embeds_part(embeds(), format="raw")
    raw_spec = {key: spec[key] for key in ("data", "dtype", "shape")}
    msg = user(text_part("a"), ready, raw_spec, "b")
    assert msg["content"] == [text_part("a"), ready, spec, text_part("b")]


def test_bytes_payload_becomes_base64_text() -> None:
    from pe_client.tensors import encode_embeds

    blob = encode_embeds(embeds(), binary=True)
    part = prompt_embeds_part(blob)
    assert isinstance(part["data"], str)
    np.testing.assert_array_equal(decode(part["data"]), embeds())


def test_builder_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        user()
    with pytest.raises(TypeError, match="message content"):
        user("a", 3)
    with pytest.raises(TypeError, match="text_part"):
        text_part(b"x")  # type: ignore[arg-type]
    assert message("tool", "result")["role"] == "tool"


def test_completion_extra_body_numpy_is_safetensors() -> None:
    body = completion_extra_body(embeds())
    assert set(body) == {"prompt_embeds"}
    payload = body["prompt_embeds"]
    assert isinstance(payload, str)
    np.testing.assert_array_equal(decode(payload), embeds())
    assert default_format(embeds()) == "safetensors"
    json.dumps(body)


def test_completion_extra_body_list_and_explicit_format() -> None:
    body = completion_extra_body([embeds(2), embeds(3)], format="raw")
    assert [p["shape"] for p in body["prompt_embeds"]] == [[2, 4], [3, 4]]
    with pytest.raises(ValueError, match="empty"):
        completion_extra_body([])


def test_chat_part() -> None:
    part = chat_part(embeds())
    assert part["type"] == "prompt_embeds"
    np.testing.assert_array_equal(decode(part["data"]), embeds())
