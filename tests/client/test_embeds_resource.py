"""client.embeds against the scripted fake server: each route's request and parsing, stored
embeds as references in completions and chat, and the re-upload when a server lost an id."""

from __future__ import annotations

import gc
import json

import httpx
import msgspec
import numpy as np
import pytest
from client_fakes import FakeServer, Reply, chat_json, completion_chunk, completion_json, sse

from pe_client import AsyncPEClient, EmbedsObject, NotFoundError, PEClient, RawTensor
from pe_client.messages import user
from pe_common.codec import decode_prompt_embeds_numpy
from pe_common.protocol.embeds import EmbedsDeleted, EmbedsList

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


def embeds_json(embeds_id: str = "emb_1", num_tokens: int = 3) -> dict[str, object]:
    return {
        "id": embeds_id,
        "object": "prompt_embeds",
        "num_tokens": num_tokens,
        "hidden_size": 4,
        "dtype": "float32",
        "bytes": num_tokens * 16,
        "created_at": 100,
        "expires_at": 3700,
    }


def not_found(param: str) -> Reply:
    error = {
        "message": "prompt embeddings not found",
        "type": "not_found_error",
        "param": param,
        "code": "embeds_not_found",
    }
    return Reply(status=404, body={"error": error})


def body(server: FakeServer, index: int = -1) -> dict[str, object]:
    seen = server.requests[index]
    if seen.headers["Content-Type"] == "application/msgpack":
        return msgspec.msgpack.decode(seen.body)  # type: ignore[no-any-return]
    return json.loads(seen.body)  # type: ignore[no-any-return]


def decode(payload: object) -> np.ndarray:
    return decode_prompt_embeds_numpy(payload, hidden_size=4)  # type: ignore[arg-type]


def routes(server: FakeServer) -> list[tuple[str, str]]:
    return [(seen.method, seen.path) for seen in server.requests]


def test_create_uploads_the_tensor_and_parses_the_object(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=201, body=embeds_json()))
    with PEClient(base_url=fake_server.base_url, api_key="sk-a") as client:
        obj = client.embeds.create(X)
    assert isinstance(obj, EmbedsObject)
    assert (obj.id, obj.num_tokens, obj.hidden_size, obj.bytes) == ("emb_1", 3, 4, 48)
    assert (obj.created_at, obj.expires_at, obj.source) == (100, 3700, None)
    assert routes(fake_server) == [("POST", "/v1/embeds")]
    assert fake_server.requests[0].headers["Authorization"] == "Bearer sk-a"
    sent = body(fake_server)
    assert set(sent) == {"data"} and isinstance(sent["data"], str)
    np.testing.assert_array_equal(decode(sent["data"]), X)


def test_create_raw_format_sends_dtype_and_shape(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=201, body=embeds_json()))
    with PEClient(base_url=fake_server.base_url) as client:
        client.embeds.create(X.astype(np.float16), format="raw")
    sent = body(fake_server)
    assert (sent["dtype"], sent["shape"]) == ("float16", [3, 4])
    np.testing.assert_array_equal(decode(sent), X.astype(np.float16))


def test_create_over_msgpack_carries_bytes(fake_server: FakeServer) -> None:
    answer = msgspec.msgpack.encode(embeds_json())
    fake_server.script(Reply(status=201, body=answer, content_type="application/msgpack"))
    with PEClient(base_url=fake_server.base_url, transport="msgpack") as client:
        obj = client.embeds.create(X)
    assert obj.id == "emb_1"
    assert fake_server.requests[0].headers["Content-Type"] == "application/msgpack"
    sent = body(fake_server)
    assert isinstance(sent["data"], bytes)
    np.testing.assert_array_equal(decode(sent["data"]), X)


def test_create_refuses_a_reference(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=201, body=embeds_json()))
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X)
        with pytest.raises(TypeError, match="reference"):
            client.embeds.create(obj)
        with pytest.raises(ValueError, match="embeds format"):
            client.embeds.create(X, format="npy")  # type: ignore[arg-type]
    assert len(fake_server.requests) == 1


def test_retrieve_list_delete_requests_and_parsing(fake_server: FakeServer) -> None:
    listing = {
        "object": "list",
        "data": [embeds_json("emb_2"), embeds_json("emb_1")],
        "first_id": "emb_2",
        "last_id": "emb_1",
        "has_more": True,
    }
    fake_server.script(
        Reply(body=embeds_json("emb_a/b")),
        Reply(body=listing),
        Reply(body=listing),
        Reply(body={"id": "emb_1", "object": "prompt_embeds", "deleted": True}),
    )
    targets: list[bytes] = []
    hooks = {"request": [lambda request: targets.append(request.url.raw_path)]}
    with (
        httpx.Client(event_hooks=hooks) as http,
        PEClient(base_url=fake_server.base_url, http_client=http) as client,
    ):
        got = client.embeds.retrieve("emb_a/b")
        page = client.embeds.list(limit=2, after="emb_9")
        client.embeds.list()
        deleted = client.embeds.delete("emb_1")
        with pytest.raises(ValueError, match="non-empty"):
            client.embeds.retrieve("")
    assert isinstance(got, EmbedsObject) and got.id == "emb_a/b"
    assert isinstance(page, EmbedsList) and [o.id for o in page.data] == ["emb_2", "emb_1"]
    assert (page.first_id, page.last_id, page.has_more) == ("emb_2", "emb_1", True)
    assert isinstance(deleted, EmbedsDeleted) and (deleted.id, deleted.deleted) == ("emb_1", True)
    assert [method for method, _ in routes(fake_server)] == ["GET", "GET", "GET", "DELETE"]
    assert targets == [
        b"/v1/embeds/emb_a%2Fb",  # an id is one path segment, whatever it holds
        b"/v1/embeds?limit=2&after=emb_9",
        b"/v1/embeds",
        b"/v1/embeds/emb_1",
    ]
    assert [seen.body for seen in fake_server.requests] == [b""] * 4


def test_an_object_is_a_reference_in_completions(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=201, body=embeds_json()), Reply(body=completion_json("ok")))
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X)
        result = client.completions.create(model="m", prompt_embeds=obj)
        client.completions.create(model="m", prompt_embeds=[X, obj, {"id": "emb_z"}])
    assert result.choices[0].text == "ok"
    assert body(fake_server, 1)["prompt_embeds"] == {"id": "emb_1"}
    mixed = body(fake_server, 2)["prompt_embeds"]
    assert isinstance(mixed, list) and mixed[1:] == [{"id": "emb_1"}, {"id": "emb_z"}]
    np.testing.assert_array_equal(decode(mixed[0]), X)


def test_an_object_is_a_reference_part_in_chat(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=201, body=embeds_json()), Reply(body=chat_json()))
    with PEClient(base_url=fake_server.base_url, transport="msgpack") as client:
        obj = client.embeds.create(X)
        message = user("Read:", obj, "Summarise")
        assert message["content"][1] == {"type": "prompt_embeds", "id": "emb_1"}
        client.chat.completions.create(
            model="m",
            messages=[message, {"role": "user", "content": ["and", obj, X]}],
        )
    sent = body(fake_server)["messages"]
    assert isinstance(sent, list)
    assert sent[0]["content"][1] == {"type": "prompt_embeds", "id": "emb_1"}
    second = sent[1]["content"]
    assert second[:2] == [{"type": "text", "text": "and"}, {"type": "prompt_embeds", "id": "emb_1"}]
    assert second[2]["type"] == "prompt_embeds" and isinstance(second[2]["data"], bytes)


def test_a_listed_object_is_a_reference_too(fake_server: FakeServer) -> None:
    listing = {"object": "list", "data": [embeds_json("emb_7")], "has_more": False}
    fake_server.script(Reply(body=listing), Reply(body=completion_json()))
    with PEClient(base_url=fake_server.base_url) as client:
        (listed,) = client.embeds.list().data
        client.completions.create(model="m", prompt_embeds=[listed])
    assert body(fake_server)["prompt_embeds"] == [{"id": "emb_7"}]


def test_reupload_on_404_then_retry_once(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(
        Reply(status=201, body=embeds_json("emb_old")),
        not_found("prompt_embeds[1].id"),
        Reply(status=201, body=embeds_json("emb_new")),
        Reply(body=completion_json("again")),
    )
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X, reupload=True)
        result = client.completions.create(
            model="m", prompt_embeds=[X, obj], extra_headers={"X-Tenant": "t1"}
        )
    assert result.choices[0].text == "again"
    assert obj.id == "emb_new"
    assert routes(fake_server) == [
        ("POST", "/v1/embeds"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeds"),
        ("POST", "/v1/completions"),
    ]
    np.testing.assert_array_equal(decode(body(fake_server, 2)["data"]), X)
    assert fake_server.requests[2].headers["X-Tenant"] == "t1"
    assert body(fake_server, 1)["prompt_embeds"][1] == {"id": "emb_old"}  # type: ignore[index]
    assert body(fake_server, 3)["prompt_embeds"][1] == {"id": "emb_new"}  # type: ignore[index]
    assert no_sleep == []


def test_a_second_404_is_raised_not_looped(fake_server: FakeServer) -> None:
    fake_server.script(
        Reply(status=201, body=embeds_json("emb_old")),
        not_found("prompt_embeds[0].id"),
        Reply(status=201, body=embeds_json("emb_new")),
        not_found("prompt_embeds[0].id"),
        Reply(status=201, body=embeds_json("emb_newer")),
    )
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X, reupload=True)
        with pytest.raises(NotFoundError) as info:
            client.completions.create(model="m", prompt_embeds=[obj])
    assert (info.value.code, info.value.param) == ("embeds_not_found", "prompt_embeds[0].id")
    assert len(fake_server.requests) == 4 and obj.id == "emb_new"


def test_without_reupload_a_404_is_raised(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=201, body=embeds_json()), not_found("prompt_embeds.id"))
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X)
        with pytest.raises(NotFoundError) as info:
            client.completions.create(model="m", prompt_embeds=obj)
    assert info.value.code == "embeds_not_found"
    assert routes(fake_server) == [("POST", "/v1/embeds"), ("POST", "/v1/completions")]


def test_other_404s_do_not_reupload(fake_server: FakeServer) -> None:
    model_missing = Reply(status=404, body={"error": {"message": "no model", "code": "x"}})
    fake_server.script(Reply(status=201, body=embeds_json()), model_missing)
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X, reupload=True)
        with pytest.raises(NotFoundError):
            client.completions.create(model="nope", prompt_embeds=obj)
    assert len(fake_server.requests) == 2 and obj.id == "emb_1"


def test_chat_history_built_earlier_follows_the_reupload(fake_server: FakeServer) -> None:
    fake_server.script(
        Reply(status=201, body=embeds_json("emb_old")),
        not_found("messages[0].content[1].id"),
        Reply(status=201, body=embeds_json("emb_new")),
        Reply(body=chat_json()),
    )
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(RawTensor.bfloat16(X), reupload=True)
        history = [user("Read:", obj, "Summarise")]  # holds the id as a string
        client.chat.completions.create(model="m", messages=history)
        assert history[0]["content"][1]["id"] == "emb_old"
        fake_server.script(Reply(body=chat_json()))
        client.chat.completions.create(model="m", messages=history)
    part = body(fake_server)["messages"][0]["content"][1]  # type: ignore[index]
    assert part == {"type": "prompt_embeds", "id": "emb_new"}


def test_stream_reuploads_before_the_stream_starts(fake_server: FakeServer) -> None:
    fake_server.script(
        Reply(status=201, body=embeds_json("emb_old")),
        not_found("prompt_embeds[0].id"),
        Reply(status=201, body=embeds_json("emb_new")),
        Reply(sse=sse(completion_chunk("a"), completion_chunk("b", "stop"))),
    )
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X, reupload=True)
        with client.completions.create(model="m", prompt_embeds=[obj], stream=True) as stream:
            text = "".join(chunk.choices[0].text for chunk in stream)
    assert text == "ab" and obj.id == "emb_new"
    assert body(fake_server)["prompt_embeds"] == [{"id": "emb_new"}]


def test_a_dropped_object_leaves_the_registry(fake_server: FakeServer) -> None:
    from pe_client.embeds_object import current_id

    fake_server.script(Reply(status=201, body=embeds_json("emb_gone")))
    with PEClient(base_url=fake_server.base_url) as client:
        obj = client.embeds.create(X, reupload=True)
        obj.replace_with(EmbedsObject(**{**embeds_json("emb_next")}))  # type: ignore[arg-type]
        assert current_id("emb_gone") == "emb_next"
        del obj
        gc.collect()
    assert current_id("emb_gone") == "emb_gone"


async def test_async_routes_and_reupload(fake_server: FakeServer) -> None:
    listing = {"object": "list", "data": [embeds_json("emb_old")], "has_more": False}
    fake_server.script(
        Reply(status=201, body=embeds_json("emb_old")),
        Reply(body=embeds_json("emb_old")),
        Reply(body=listing),
        not_found("messages[0].content[0].id"),
        Reply(status=201, body=embeds_json("emb_new")),
        Reply(body=chat_json("async")),
        Reply(body={"id": "emb_new", "object": "prompt_embeds", "deleted": True}),
    )
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        obj = await client.embeds.create(X, reupload=True)
        got = await client.embeds.retrieve(obj.id)
        page = await client.embeds.list(limit=1)
        reply = await client.chat.completions.create(model="m", messages=[user(obj, "Hi")])
        deleted = await client.embeds.delete(obj.id)
    assert got.id == "emb_old" and page.data[0].id == "emb_old"
    assert reply.choices[0].message.content == "async"
    assert obj.id == "emb_new" and deleted.deleted
    assert routes(fake_server) == [
        ("POST", "/v1/embeds"),
        ("GET", "/v1/embeds/emb_old"),
        ("GET", "/v1/embeds"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeds"),
        ("POST", "/v1/chat/completions"),
        ("DELETE", "/v1/embeds/emb_new"),
    ]
    assert body(fake_server, 5)["messages"][0]["content"][0]["id"] == "emb_new"  # type: ignore[index]


async def test_async_stream_reupload_and_second_404(fake_server: FakeServer) -> None:
    fake_server.script(
        Reply(status=201, body=embeds_json("emb_old")),
        not_found("prompt_embeds.id"),
        Reply(status=201, body=embeds_json("emb_new")),
        not_found("prompt_embeds.id"),
    )
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        obj = await client.embeds.create(X, reupload=True)
        with pytest.raises(NotFoundError):
            await client.completions.create(model="m", prompt_embeds=obj, stream=True)
    assert len(fake_server.requests) == 4 and obj.id == "emb_new"
