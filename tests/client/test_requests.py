"""Request building: URLs, headers, JSON and msgpack bodies, parameters, typed results."""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Callable

import msgspec
import numpy as np
import pytest
from client_fakes import FakeServer, Reply, chat_json, completion_json

from pe_client import AsyncPEClient, PEClient, RawTensor
from pe_client.messages import user
from pe_client.params import ChatCompletionParams, CompletionParams
from pe_client.resources import (
    AsyncChatCompletions,
    AsyncCompletions,
    AsyncEmbeds,
    AsyncModels,
    ChatCompletions,
    Completions,
    Embeds,
    Models,
)
from pe_common.codec import decode_prompt_embeds_numpy
from pe_common.protocol import ChatCompletionResponse, CompletionResponse, ModelList

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


def decode(payload: object) -> np.ndarray:
    return decode_prompt_embeds_numpy(payload, hidden_size=4)  # type: ignore[arg-type]


def body(server: FakeServer, index: int = -1) -> dict[str, object]:
    seen = server.requests[index]
    if seen.headers["Content-Type"] == "application/msgpack":
        return msgspec.msgpack.decode(seen.body)  # type: ignore[no-any-return]
    return json.loads(seen.body)  # type: ignore[no-any-return]


def test_completion_with_embeds_json(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json("Paris")))
    with PEClient(base_url=fake_server.base_url, api_key="sk-test") as client:
        result = client.completions.create(
            model="m", prompt_embeds=X, max_tokens=5, temperature=0.0, top_k=3, seed=7
        )
    assert isinstance(result, CompletionResponse)
    assert result.choices[0].text == "Paris"
    seen = fake_server.requests[0]
    assert (seen.method, seen.path) == ("POST", "/v1/completions")
    assert seen.headers["Authorization"] == "Bearer sk-test"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["User-Agent"].startswith("pe-client/")
    sent = body(fake_server)
    assert {k: sent[k] for k in ("model", "max_tokens", "temperature", "top_k", "seed")} == {
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.0,
        "top_k": 3,
        "seed": 7,
    }
    assert "prompt" not in sent and "stream" not in sent
    np.testing.assert_array_equal(decode(sent["prompt_embeds"]), X)


def test_msgpack_transport_sends_raw_bytes(fake_server: FakeServer) -> None:
    payload = msgspec.msgpack.encode(completion_json("bin"))
    fake_server.script(Reply(body=payload, content_type="application/msgpack"))
    with PEClient(base_url=fake_server.base_url, transport="msgpack") as client:
        result = client.completions.create(model="m", prompt_embeds=[X, X[:1]], prompt="hi")
    assert result.choices[0].text == "bin"
    seen = fake_server.requests[0]
    assert seen.headers["Content-Type"] == "application/msgpack"
    assert seen.headers["Accept"] == "application/msgpack"
    sent = body(fake_server)
    embeds = sent["prompt_embeds"]
    assert isinstance(embeds, list) and all(isinstance(e, bytes) for e in embeds)
    assert [decode(e).shape[0] for e in embeds] == [3, 1]
    assert sent["prompt"] == "hi"


@pytest.mark.parametrize("transport", ["json", "msgpack"])
def test_raw_format_in_both_transports(fake_server: FakeServer, transport: str) -> None:
    fake_server.script(Reply(body=completion_json()))
    with PEClient(
        base_url=fake_server.base_url,
        transport=transport,  # type: ignore[arg-type]
        embeds_format="raw",
    ) as client:
        client.completions.create(model="m", prompt_embeds=X)
    spec = body(fake_server)["prompt_embeds"]
    assert isinstance(spec, dict) and spec["dtype"] == "float32" and spec["shape"] == [3, 4]
    assert isinstance(spec["data"], bytes if transport == "msgpack" else str)
    np.testing.assert_array_equal(decode(spec), X)


def test_chat_encodes_tensors_inside_parts(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=chat_json("ok")))
    messages = [
        {"role": "system", "content": "terse"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Read:"},
                {"type": "prompt_embeds", "data": X},
                X[:2],
                "bare text",
            ],
        },
    ]
    with PEClient(base_url=fake_server.base_url, embeds_format="raw") as client:
        result = client.chat.completions.create(
            model="m",
            messages=messages,
            max_completion_tokens=4,
            logprobs=True,
            top_logprobs=2,
            chat_template_kwargs={"enable_thinking": False},
        )
    assert isinstance(result, ChatCompletionResponse)
    assert result.choices[0].message.content == "ok"
    assert fake_server.requests[0].path == "/v1/chat/completions"
    sent = body(fake_server)
    parts = sent["messages"][1]["content"]  # type: ignore[index]
    assert [p["type"] for p in parts] == ["text", "prompt_embeds", "prompt_embeds", "text"]
    np.testing.assert_array_equal(decode(parts[1]), X)
    assert parts[2]["shape"] == [2, 4]
    assert sent["top_logprobs"] == 2 and sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert messages[1]["content"][1]["data"] is X  # type: ignore[index]  # caller's dicts untouched


def test_chat_with_builder_messages_is_sent_as_built(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=chat_json()))
    msgs = [user("Summarise:", X, "in one line")]
    with PEClient(base_url=fake_server.base_url, transport="msgpack") as client:
        client.chat.completions.create(model="m", messages=msgs)
    assert body(fake_server)["messages"] == msgs


def test_bfloat16_raw_tensor_in_completions(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json()))
    with PEClient(base_url=fake_server.base_url) as client:
        client.completions.create(model="m", prompt_embeds=RawTensor.bfloat16(X))
    np.testing.assert_allclose(decode(body(fake_server)["prompt_embeds"]), X, rtol=1e-2)


def test_extra_body_headers_and_timeout(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json()))
    with PEClient(base_url=fake_server.base_url, default_headers={"X-Team": "a"}) as client:
        client.completions.create(
            model="m",
            prompt=[1, 2, 3],
            extra_body={"custom_field": 1, "top_k": 9},
            extra_headers={"X-Trace": "t1"},
            timeout=5.0,
            top_k=2,
        )
    seen = fake_server.requests[0]
    assert seen.headers["X-Team"] == "a" and seen.headers["X-Trace"] == "t1"
    sent = body(fake_server)
    assert sent["custom_field"] == 1 and sent["top_k"] == 9  # extra_body wins
    assert sent["prompt"] == [1, 2, 3]


def test_none_params_are_left_out_and_unknown_ones_refused(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json()))
    with PEClient(base_url=fake_server.base_url) as client:
        client.completions.create(model="m", prompt="a", temperature=None)
        assert "temperature" not in body(fake_server)
        with pytest.raises(TypeError, match="max_token"):
            client.completions.create(model="m", prompt="a", max_token=3)
        with pytest.raises(TypeError, match="top_logprobs"):
            client.completions.create(model="m", prompt="a", top_logprobs=3)
    assert len(fake_server.requests) == 1


def test_every_documented_sampling_field_is_accepted(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json()))
    values = {
        "max_tokens": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "min_p": 0.1,
        "n": 2,
        "seed": 1,
        "stop": ["\n"],
        "stop_token_ids": [2],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "repetition_penalty": 1.1,
        "logprobs": 2,
        "min_tokens": 1,
        "ignore_eos": True,
        "echo": False,
        "suffix": "x",
        "return_token_ids": True,
        "prompt_logprobs": 1,
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "user": "u",
    }
    assert set(values) <= CompletionParams.__optional_keys__
    with PEClient(base_url=fake_server.base_url) as client:
        client.completions.create(model="m", prompt="a", **values)  # type: ignore[arg-type]
    sent = body(fake_server)
    assert {k: sent[k] for k in values} == values


def test_params_cover_the_server_request_schema() -> None:
    from pe_common import protocol

    for struct, params, own in (
        (protocol.CompletionRequest, CompletionParams, {"model", "prompt", "prompt_embeds"}),
        (protocol.ChatCompletionRequest, ChatCompletionParams, {"model", "messages"}),
    ):
        fields = set(struct.__struct_fields__) - own - {"stream"}
        assert params.__optional_keys__ == fields, struct.__name__


def test_models_list(fake_server: FakeServer) -> None:
    cards = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "pe"}]}
    fake_server.script(Reply(body=cards))
    with PEClient(base_url=fake_server.base_url + "/") as client:
        models = client.models.list()
    assert isinstance(models, ModelList)
    assert [card.id for card in models.data] == ["m"]
    seen = fake_server.requests[0]
    assert (seen.method, seen.path, seen.body) == ("GET", "/v1/models", b"")
    assert "Content-Type" not in seen.headers


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch, fake_server: FakeServer) -> None:
    monkeypatch.setenv("PE_BASE_URL", fake_server.base_url)
    monkeypatch.delenv("PE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    fake_server.script(Reply(body=completion_json()))
    with PEClient() as client:
        assert client.api_key == "sk-openai"
        client.completions.create(model="m", prompt="a")
    assert fake_server.requests[0].headers["Authorization"] == "Bearer sk-openai"
    monkeypatch.setenv("PE_API_KEY", "sk-pe")
    assert PEClient().api_key == "sk-pe"
    monkeypatch.delenv("PE_BASE_URL")
    monkeypatch.delenv("PE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    client = PEClient()
    assert str(client.base_url) == "http://127.0.0.1:8000/v1/"
    assert client.api_key is None and client._auth_headers() == {}


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="transport"):
        PEClient(transport="grpc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embeds format"):
        PEClient(embeds_format="npy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_retries"):
        PEClient(max_retries=-1)
    with pytest.raises(TypeError):
        PEClient("http://x")  # type: ignore[misc]


def test_with_options_shares_the_connection_pool(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json()))
    with PEClient(base_url=fake_server.base_url) as client:
        other = client.with_options(embeds_format="raw", max_retries=0)
        assert other._http is client._http and other.max_retries == 0
        other.completions.create(model="m", prompt_embeds=X)
        other.close()  # does not close the shared pool
        client.completions.create(model="m", prompt="still open")
    assert isinstance(body(fake_server, 0)["prompt_embeds"], dict)


async def test_async_completion_and_chat(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json("a1")), Reply(body=chat_json("a2")))
    async with AsyncPEClient(base_url=fake_server.base_url, transport="msgpack") as client:
        done = await client.completions.create(model="m", prompt_embeds=X)
        chat = await client.chat.completions.create(model="m", messages=[user("q", X)])
    assert done.choices[0].text == "a1"
    assert chat.choices[0].message.content == "a2"
    assert isinstance(body(fake_server, 0)["prompt_embeds"], bytes)
    part = body(fake_server, 1)["messages"][0]["content"][1]  # type: ignore[index]
    assert base64.b64decode(part["data"])  # builder output stays base64 text


async def test_async_models_list(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body={"object": "list", "data": []}))
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        assert (await client.models.list()).data == []


@pytest.mark.parametrize(
    ("sync_method", "async_method"),
    [
        (Completions.create, AsyncCompletions.create),
        (ChatCompletions.create, AsyncChatCompletions.create),
        (Models.list, AsyncModels.list),
        (Embeds.create, AsyncEmbeds.create),
        (Embeds.delete, AsyncEmbeds.delete),
    ],
)
def test_async_methods_are_coroutine_functions_with_the_sync_parameters(
    sync_method: Callable[..., object], async_method: Callable[..., object]
) -> None:
    assert inspect.iscoroutinefunction(async_method)
    assert not inspect.iscoroutinefunction(sync_method)
    sync_params = inspect.signature(sync_method).parameters
    assert inspect.signature(async_method).parameters == sync_params
    assert "extra_headers" in sync_params and "timeout" in sync_params


async def test_async_create_checks_its_arguments_when_awaited(fake_server: FakeServer) -> None:
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        pending = client.completions.create(model="m", prompt="a", max_token=3)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="max_token"):
            await pending
    assert fake_server.requests == []
